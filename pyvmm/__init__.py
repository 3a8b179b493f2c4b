"""pyvmm: a userspace virtual machine monitor in Python over /dev/kvm.

``Machine`` is the embedding API; ``pyvmm.kvm`` holds the raw ioctl wrappers and
``pyvmm.guest`` the SDK for building guests.  The names below are imported on first use,
so ``import pyvmm.guest`` (or the CLI's ``guest`` and ``--help`` paths) never loads the
native extension or the loaders.
"""

# neither ``from __future__ import annotations`` (an import of its own) nor
# typing.TYPE_CHECKING (importing typing costs ~17 ms): this module is imported before
# pyvmm.entry can install its signal handlers (mypy knows the name)
TYPE_CHECKING = False

__version__ = "0.2.0"
#: the distribution's name on PyPI (``pip install pyvmm-kvm``); ``pyvmm`` there is another project
DISTRIBUTION = "pyvmm-kvm"
__all__ = ["DISTRIBUTION", "GuestImageError", "HistoryLimits", "KvmError", "Machine",
           "PyvmmError", "RunResult", "RunStatus", "Space", "__version__"]

if TYPE_CHECKING:
    from typing import Any

    from pyvmm.errors import GuestImageError, PyvmmError
    from pyvmm.kvm.errors import KvmError
    from pyvmm.machine import Machine
    from pyvmm.vstate.fastpath import Space
    from pyvmm.vstate.history import HistoryLimits
    from pyvmm.vstate.result import RunResult, RunStatus

_LAZY = {"Space": "pyvmm.vstate.fastpath", "KvmError": "pyvmm.kvm.errors",
         "GuestImageError": "pyvmm.errors", "PyvmmError": "pyvmm.errors",
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
