"""The Bochs/QEMU shutdown port: a QEMU-targeted kernel powers off by writing "Shutdown"."""

from __future__ import annotations

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.fastpath import Space

BOCHS_SHUTDOWN_PORT = 0x8900


class BochsShutdown(Device):
    """Writing the bytes of "Shutdown" to port 0x8900 powers the machine off."""

    WORD = b"Shutdown"
    state_limits = {"matched": len(WORD) - 1}  # an index into WORD

    def __init__(self, name: str = "bochs-shutdown") -> None:
        self.name = name
        self.matched = 0

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, BOCHS_SHUTDOWN_PORT, 1)]

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        c = value & 0xFF
        if c == self.WORD[self.matched]:
            self.matched += 1
            if self.matched == len(self.WORD):
                self.matched = 0
                raise GuestStop(0, "shutdown")
        else:
            self.matched = 1 if c == self.WORD[0] else 0
