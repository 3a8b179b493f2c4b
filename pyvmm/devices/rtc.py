"""MC146818 RTC and CMOS RAM at ports 0x70/0x71, as a BIOS leaves it.

The clock ticks with the host's UTC time, in BCD and 24-hour mode (status B = 0x02).
Status A's update-in-progress bit is 1 for the last 244 us of every second, as on the
MC146818, so the usual "wait for the next RTC second" loop ends.  The alarm registers (1, 3,
5; 0xC0-0xFF = don't care) with status B's AIE set wake a machine suspended to RAM; status
C's alarm flag shows once the alarm time has passed.  CMOS holds the memory sizes a BIOS records and the
shutdown status byte (0x0f), which the guest may read and write.
"""

from __future__ import annotations

import time

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.fastpath import Space

INDEX_PORT = 0x70
DATA_PORT = 0x71
#: the index register as an offset into the device's ports (what the bus hands it)
INDEX = 0
SHUTDOWN_STATUS = 0x0F
REG_A_UIP = 0x80
REG_B_AIE = 0x20
REG_C_IRQF, REG_C_AF = 0x80, 0x20
#: the MC146818 raises UIP this long before each update
UIP_WINDOW = 244e-6
ALARM_REGS = (0x01, 0x03, 0x05)  # seconds, minutes, hours


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _unbcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0xF)


class Rtc(Device):
    state_limits = {"index": 0x7F}  # an index into the 128 bytes of CMOS

    def __init__(self, ram_below_4g: int, ram_above_4g: int = 0, name: str = "rtc") -> None:
        self.name = name
        self.index = 0
        self.cmos = bytearray(128)
        self.cmos[0x0A] = 0x26  # 32.768 kHz time base, 1024 Hz rate
        self.cmos[0x0B] = 0x02  # 24-hour, BCD
        self.cmos[0x0D] = 0x80  # CMOS contents valid
        self._last_c_read = time.time()
        base_kb = 640
        ext_kb = min(max(ram_below_4g - (1 << 20), 0) // 1024, 0xFFFF)
        above_16m = min(max(ram_below_4g - (16 << 20), 0) >> 16, 0xFFFF)
        above_4g = ram_above_4g >> 16
        for reg, value, n in ((0x15, base_kb, 2), (0x17, ext_kb, 2), (0x30, ext_kb, 2),
                              (0x34, above_16m, 2), (0x5B, above_4g, 3)):
            self.cmos[reg:reg + n] = value.to_bytes(n, "little")

    def _clock(self, reg: int, now: float | None = None) -> int | None:
        t = time.gmtime(time.time() if now is None else now)
        fields = {0x00: t.tm_sec, 0x02: t.tm_min, 0x04: t.tm_hour, 0x06: (t.tm_wday + 1) % 7 + 1,
                  0x07: t.tm_mday, 0x08: t.tm_mon, 0x09: t.tm_year % 100, 0x32: t.tm_year // 100}
        return _bcd(fields[reg]) if reg in fields else None

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, INDEX_PORT, 2)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        if addr == INDEX:
            return self.index
        reg = self.index
        clock = self._clock(reg)
        if clock is not None:
            return clock
        if reg == 0x0A:
            frac = time.time() % 1.0
            return self.cmos[0x0A] | (REG_A_UIP if frac >= 1.0 - UIP_WINDOW else 0)
        if reg == 0x0C:  # reading C clears the flags
            flags = REG_C_AF | REG_C_IRQF if self._alarm_passed() else 0
            self._last_c_read = time.time()
            return flags
        return self.cmos[reg]

    def _alarm_matches(self, when: float) -> bool:
        t = time.gmtime(when)
        for reg, now in zip(ALARM_REGS, (t.tm_sec, t.tm_min, t.tm_hour), strict=True):
            want = self.cmos[reg]
            if want < 0xC0 and _unbcd(want) != now:
                return False
        return True

    def _alarm_passed(self) -> bool:
        """An alarm time came between the last read of status C and now."""
        start, now = int(self._last_c_read) + 1, int(time.time())
        return any(self._alarm_matches(s) for s in range(max(start, now - 2), now + 1))

    def seconds_to_alarm(self, now: float | None = None) -> float | None:
        """Seconds until the next alarm match (AIE set), None when no alarm is armed or none
        matches within a day."""
        if not self.cmos[0x0B] & REG_B_AIE:
            return None
        now = time.time() if now is None else now
        first = int(now) + 1
        for s in range(first, first + 86400):
            if self._alarm_matches(s):
                return s - now
        return None

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if addr == INDEX:
            self.index = value & 0x7F  # bit 7 is the NMI mask
        elif self.index == 0x0A:
            self.cmos[0x0A] = value & 0x7F  # UIP is read-only
        elif self.index not in (0x0C, 0x0D):
            self.cmos[self.index] = value & 0xFF
