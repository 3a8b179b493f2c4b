"""Thin, typed wrappers over the KVM ioctls: one class per fd kind.

``Kvm`` (the system fd), ``Vm`` (a VM fd) and ``Vcpu`` (a vCPU fd).  Methods are named
after the ioctl they wrap and raise :class:`KvmError` on failure.
"""

from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.exits import exit_name
from pyvmm.kvm.stats import StatsReader
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm

__all__ = ["Kvm", "KvmError", "StatsReader", "Vcpu", "Vm", "exit_name"]
