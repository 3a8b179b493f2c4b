"""Guest RDMSR/WRMSR sent to Python (KVM's MSR filter + KVM_CAP_X86_USER_SPACE_MSR).

Kept apart from the I/O bus: MSRs are not addresses in a space but indices, and they reach
the VMM through their own exits (KVM_EXIT_X86_RDMSR/WRMSR).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

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
