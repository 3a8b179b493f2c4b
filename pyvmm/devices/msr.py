"""Guest RDMSR/WRMSR sent to Python (KVM's MSR filter + KVM_CAP_X86_USER_SPACE_MSR).

Kept apart from the I/O bus: MSRs are not addresses in a space but indices, and they reach
the VMM through their own exits (KVM_EXIT_X86_RDMSR/WRMSR).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

MsrRead = Callable[[], int]
MsrWrite = Callable[[int], None]


class MsrHandlers:
    """MSR index -> ``(read() -> value, write(value))``; a missing direction is #GP."""

    def __init__(self) -> None:
        self.handlers: dict[int, tuple[MsrRead | None, MsrWrite | None]] = {}
        self.lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self.handlers)

    def add(self, index: int, read: MsrRead | None, write: MsrWrite | None) -> None:
        with self.lock:
            self.handlers[index] = (read, write)

    def attach(self, vm: Vm, index: int, read: MsrRead | None, write: MsrWrite | None) -> None:
        """Handle ``index`` here: KVM's MSR filter denies it on ``vm`` and
        KVM_CAP_X86_USER_SPACE_MSR (enabled with the first handler) turns the denial into
        a KVM_EXIT_X86_RDMSR/WRMSR."""
        if not self:
            vm.enable_user_space_msr()
        self.add(index, read, write)
        vm.deny_msrs(self.indices())

    def indices(self) -> list[int]:
        return sorted(self.handlers)

    def read(self, index: int) -> int | None:
        """The value for a guest RDMSR, or None: the guest takes #GP."""
        with self.lock:
            handler = self.handlers.get(index, (None, None))[0]
            return None if handler is None else handler() & 0xFFFF_FFFF_FFFF_FFFF

    def write(self, index: int, value: int) -> bool:
        """Hand a guest WRMSR to its handler; False: the guest takes #GP."""
        with self.lock:
            handler = self.handlers.get(index, (None, None))[1]
            if handler is None:
                return False
            handler(value)
            return True
