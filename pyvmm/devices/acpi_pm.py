"""The ACPI PM block of QEMU's PC (PIIX4): PM1 event and control registers and the PM
timer; S5 powers off, S3 suspends."""

from __future__ import annotations

import struct
import time

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.fastpath import READ, Action, FastEntry, Space

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

PM_BASE = 0x600  # PM1a event (0x600), PM1a control (0x604), PM timer (0x608), as QEMU's PIIX4
PM_TIMER = PM_BASE + 8
PM_TIMER_HZ = 3_579_545


class AcpiPm(Device):
    """The PIIX4-style ACPI PM block of QEMU's PC: PM1a status (0x600, write 1 to clear),
    PM1a enable (0x602), PM1a control (0x604) and the 32-bit PM timer (0x608) at 3.579545 MHz
    (the FADT says TMR_VAL_EXT), counting from the host's monotonic clock.

    Writing SLP_EN with SLP_TYP 0 (the DSDT's ``_S5``) powers the machine off; with SLP_TYP 1
    (``_S3``) it suspends to RAM: the run stops with ``suspend`` and the platform wakes it
    (``wake()``) when an enabled RTC alarm fires."""

    STS, EN, CNT = 0, 2, 4
    TMR_STS, PWRBTN_STS, RTC_STS, WAK_STS = 1 << 0, 1 << 8, 1 << 10, 1 << 15
    RTC_EN = 1 << 10
    SCI_EN, SLP_EN = 1 << 0, 1 << 13
    SLP_TYP_SHIFT = 10
    S3, S5 = 1, 0
    state_limits = {"sts": 0xFFFF, "en": 0xFFFF, "cnt": 0xFFFF}  # 16-bit registers

    def __init__(self, name: str = "acpi-pm") -> None:
        self.name = name
        self.sts = 0
        self.en = 0
        self.cnt = self.SCI_EN  # ACPI mode from the start: there is no SMI handler to ask
        self.t0 = time.monotonic_ns()

    def timer(self) -> int:
        return ((time.monotonic_ns() - self.t0) * PM_TIMER_HZ // 1_000_000_000) & 0xFFFFFFFF

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, PM_BASE, 12)]

    def fast_entries(self) -> list[FastEntry]:
        """The PM timer is read in C (a CLOCK entry over the same clock as :meth:`timer`):
        guests poll it in tight loops, and each read is an exit."""
        return [FastEntry(Space.PIO, PM_TIMER, 4, READ, Action.CLOCK, self, read_value=self.t0,
                          clock_hz=PM_TIMER_HZ, clock_mask=0xFFFFFFFF)]

    def state(self) -> dict[str, Any]:
        """The registers; the timer is the host's clock, not state (it runs on)."""
        return {"sts": self.sts, "en": self.en, "cnt": self.cnt}

    def _regs(self) -> bytes:
        return struct.pack("<HHHHI", self.sts, self.en, self.cnt, 0, self.timer())

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        off = addr
        return int.from_bytes(self._regs()[off:off + size], "little")

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        off = addr
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):  # registers are written byte by byte, as ISA does
            self._write_byte(off + i, byte)
        if self.cnt & self.SLP_EN:
            self.cnt &= ~self.SLP_EN  # write-only: it always reads 0
            typ = (self.cnt >> self.SLP_TYP_SHIFT) & 7
            if typ == self.S5:
                raise GuestStop(0, "shutdown")
            if typ == self.S3:
                raise GuestStop(0, "suspend")

    def _write_byte(self, off: int, byte: int) -> None:
        shift = 8 * (off & 1)
        if off in (self.STS, self.STS + 1):
            self.sts &= ~(byte << shift)  # write 1 to clear
        elif off in (self.EN, self.EN + 1):
            self.en = (self.en & ~(0xFF << shift)) | (byte << shift)
        elif off in (self.CNT, self.CNT + 1):
            self.cnt = (self.cnt & ~(0xFF << shift)) | (byte << shift)

    def wake(self) -> None:
        """The machine resumed from S3 because of the RTC alarm."""
        self.sts |= self.WAK_STS | self.RTC_STS
