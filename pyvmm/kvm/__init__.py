"""Thin, typed wrappers over the KVM ioctls: one class per fd kind.

``Kvm`` (the system fd, system.py), ``Vm`` (a VM fd, vm.py) and ``Vcpu`` (a vCPU fd,
vcpu.py).  Methods are named after the ioctl they wrap and raise :class:`KvmError` on
failure.  The modules import one way only: system -> vm -> vcpu -> (fd, stats, errors,
native); ``native`` is the layer's one door to the cffi extension.
"""

from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.run import exit_name
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.kvm.stats import StatsReader

__all__ = ["Kvm", "KvmError", "StatsReader", "Vcpu", "Vm", "exit_name"]


def __getattr__(name: str) -> object:
    """``StatsReader`` on first use: a run that reads no statistics never loads it."""
    if name == "StatsReader":
        from pyvmm.kvm.stats import StatsReader

        return StatsReader
    raise AttributeError(f"module 'pyvmm.kvm' has no attribute {name!r}")
