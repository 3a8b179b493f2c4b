"""Small legacy PC devices a QEMU-targeted kernel probes: the Bochs shutdown port, PCI
configuration mechanism #1 with no devices, and the ACPI PM timer."""

from __future__ import annotations

import time

from pyvmm.devices.base import Device, VcpuContext, all_ones
from pyvmm.devices.bus import GuestStop

BOCHS_SHUTDOWN_PORT = 0x8900
PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC
PM_BASE = 0x600  # PM1a event (0x600), PM1a control (0x604), PM timer (0x608), as QEMU's PIIX4
PM_TIMER = PM_BASE + 8
PM_TIMER_HZ = 3_579_545


class BochsShutdown(Device):
    """Writing the bytes of "Shutdown" to port 0x8900 powers the machine off."""

    WORD = b"Shutdown"

    def __init__(self, name: str = "bochs-shutdown") -> None:
        self.name = name
        self.matched = 0

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        c = value & 0xFF
        if c == self.WORD[self.matched]:
            self.matched += 1
            if self.matched == len(self.WORD):
                self.matched = 0
                raise GuestStop(0, "shutdown")
        else:
            self.matched = 1 if c == self.WORD[0] else 0


class PciConfigMech1(Device):
    """0xcf8 holds the address; 0xcfc-0xcff read all-ones: no device on any bus."""

    def __init__(self, name: str = "pci-config") -> None:
        self.name = name
        self.address = 0

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        if addr == PCI_CONFIG_ADDRESS and size == 4:
            return self.address
        return all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if addr == PCI_CONFIG_ADDRESS and size == 4:
            self.address = value & 0x80FFFFFC


class AcpiPm(Device):
    """PM1a event/control registers (plain storage) and the 32-bit PM timer at 3.579545 MHz
    (the FADT says TMR_VAL_EXT), counting from the host's monotonic clock."""

    def __init__(self, name: str = "acpi-pm") -> None:
        self.name = name
        self.regs = bytearray(8)
        self.t0 = time.monotonic_ns()

    def timer(self) -> int:
        return ((time.monotonic_ns() - self.t0) * PM_TIMER_HZ // 1_000_000_000) & 0xFFFFFFFF

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        off = addr - PM_BASE
        if off >= 8:
            return self.timer() >> (8 * (off - 8))
        return int.from_bytes(self.regs[off:off + size], "little")

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        off = addr - PM_BASE
        if off < 8:
            end = min(off + size, 8)
            self.regs[off:end] = value.to_bytes(size, "little")[:end - off]
