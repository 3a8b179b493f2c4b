"""MC146818 RTC and CMOS RAM at ports 0x70/0x71, as a BIOS leaves it.

The clock ticks with the host's UTC time, in BCD and 24-hour mode (status B = 0x02); the
update-in-progress bit never shows.  CMOS holds the memory sizes a BIOS records and the
shutdown status byte (0x0f), which the guest may read and write.
"""

from __future__ import annotations

import time

from pyvmm.devices.base import Device, VcpuContext

INDEX_PORT = 0x70
DATA_PORT = 0x71
SHUTDOWN_STATUS = 0x0F


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


class Rtc(Device):
    def __init__(self, ram_below_4g: int, ram_above_4g: int = 0, name: str = "rtc") -> None:
        self.name = name
        self.index = 0
        self.cmos = bytearray(128)
        self.cmos[0x0A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.cmos[0x0B] = 0x02  # 24-hour, BCD
        self.cmos[0x0D] = 0x80  # CMOS contents valid
        base_kb = 640
        ext_kb = min(max(ram_below_4g - (1 << 20), 0) // 1024, 0xFFFF)
        above_16m = min(max(ram_below_4g - (16 << 20), 0) >> 16, 0xFFFF)
        above_4g = ram_above_4g >> 16
        for reg, value, n in ((0x15, base_kb, 2), (0x17, ext_kb, 2), (0x30, ext_kb, 2),
                              (0x34, above_16m, 2), (0x5B, above_4g, 3)):
            self.cmos[reg:reg + n] = value.to_bytes(n, "little")

    def _clock(self, reg: int) -> int | None:
        t = time.gmtime()
        fields = {0x00: t.tm_sec, 0x02: t.tm_min, 0x04: t.tm_hour, 0x06: (t.tm_wday + 1) % 7 + 1,
                  0x07: t.tm_mday, 0x08: t.tm_mon, 0x09: t.tm_year % 100, 0x32: t.tm_year // 100}
        return _bcd(fields[reg]) if reg in fields else None

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        if addr == INDEX_PORT:
            return self.index
        reg = self.index
        clock = self._clock(reg)
        if clock is not None:
            return clock
        if reg == 0x0C:  # reading C clears the interrupt flags (none are ever raised)
            return 0
        return self.cmos[reg]

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if addr == INDEX_PORT:
            self.index = value & 0x7F  # bit 7 is the NMI mask
        elif self.index not in (0x0C, 0x0D):
            self.cmos[self.index] = value & 0xFF
