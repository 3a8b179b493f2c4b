"""Fuzzing guest code: :class:`Target` runs inputs against one VM reset by snapshot
(``Target(guest).run(data)``), :mod:`pyvmm.fuzz.forkserver` lets AFL++ drive it
(``pyvmm fuzz-target``).  docs/fuzzing.md tells the whole story.

Nothing below this package imports it: ``pyvmm run`` never loads it unless asked for
``--input``."""

from pyvmm.fuzz.target import FuzzResult, FuzzSetupError, Target

__all__ = ["FuzzResult", "FuzzSetupError", "Target"]
