"""pyvmm: a userspace virtual machine monitor in Python over /dev/kvm.

``Machine`` is the embedding API; ``pyvmm.kvm`` holds the raw ioctl wrappers and
``pyvmm.guest`` the SDK for building guests.  The names below are imported on first use,
so ``import pyvmm.guest`` (or the CLI's ``guest`` and ``--help`` paths) never loads the
native extension or the loaders; ``__dir__`` lists them all the same.
"""

# neither ``from __future__ import annotations`` (an import of its own) nor
# typing.TYPE_CHECKING (importing typing costs ~17 ms): this module is imported before
# pyvmm.entry can install its signal handlers (mypy knows the name)
TYPE_CHECKING = False

__version__ = "0.2.0"
__all__ = ["GuestExitedError", "GuestImageError", "HistoryLimits", "KvmError", "Machine",
           "MachineStateError", "PyvmmError", "RunResult", "RunStatus", "Space", "__version__"]

if TYPE_CHECKING:
    from typing import Any

    from pyvmm.devices.fastpath import Space
    from pyvmm.errors import GuestExitedError, GuestImageError, MachineStateError, PyvmmError
    from pyvmm.kvm.errors import KvmError
    from pyvmm.machine import Machine
    from pyvmm.vstate.history import HistoryLimits
    from pyvmm.vstate.result import RunResult, RunStatus

_LAZY = {"Space": "pyvmm.devices.fastpath", "KvmError": "pyvmm.kvm.errors",
         "GuestImageError": "pyvmm.errors", "PyvmmError": "pyvmm.errors",
         "GuestExitedError": "pyvmm.errors", "MachineStateError": "pyvmm.errors",
         "Machine": "pyvmm.machine", "RunResult": "pyvmm.vstate.result",
         "RunStatus": "pyvmm.vstate.result", "HistoryLimits": "pyvmm.vstate.history"}


def __getattr__(name: str) -> "Any":
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'pyvmm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The public API (lazy names included) and the module's dunders, not the helpers
    this module needs to be lazy."""
    return sorted({*__all__, *(n for n in globals() if n.startswith("__") and n.endswith("__"))})
