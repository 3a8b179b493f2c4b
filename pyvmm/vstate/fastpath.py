"""Deprecated home of the fast-exit vocabulary: it is :mod:`pyvmm.devices.fastpath` now
(the devices speak it; the run loop, above them, reads it).  Kept so that code importing
``pyvmm.vstate.fastpath.Space`` goes on working."""

from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, FastOwner, Space

__all__ = ["READ", "WRITE", "Action", "FastEntry", "FastOwner", "Space"]
