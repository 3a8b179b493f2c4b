"""QEMU's pc-testdev, as kvm-unit-tests use it.

- port 0xe0: a 32-bit scratch register (1/2/4-byte access);
- port 0xe4: "flush page": a 4-byte write of a guest-physical address makes the host drop
  that page's mapping, so the guest's next access faults into KVM again;
- ports 0x2000-0x2017: ISA IRQ lines; a byte write sets the line's level (KVM_IRQ_LINE);
- MMIO 0xff000000, 64 KiB of device memory: every access exits, reads give back what was
  written.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm._native import lib
from pyvmm.devices.bus import all_ones
from pyvmm.memory import GuestMemory, GuestMemoryError

SCRATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
IRQ_PORT = 0x2000
IRQ_LINES = 24
IOMEM_BASE = 0xFF000000
IOMEM_LEN = 0x10000


class PcTestScratch:
    def __init__(self, name: str = "pc-testdev") -> None:
        self.name = name
        self.value = 0

    def read(self, addr: int, size: int) -> int:
        return self.value & (all_ones(size))

    def write(self, addr: int, size: int, value: int) -> None:
        self.value = value & (all_ones(size))


class PcTestFlush:
    def __init__(self, memory: GuestMemory, name: str = "pc-testdev-flush") -> None:
        self.name = name
        self.memory = memory
        self.flushed: list[int] = []

    def read(self, addr: int, size: int) -> int:
        return all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        page = value & ~0xFFF
        try:  # the address is the guest's: checked, and ignored when it is not RAM
            region = self.memory.region_at(page, 4096)
        except GuestMemoryError:
            return
        lib.pyvmm_flush_page(region.host + (page - region.gpa))
        self.flushed.append(page)


class PcTestIrq:
    def __init__(self, set_level: Callable[[int, int], object], name: str = "pc-testdev-irq") -> None:
        self.name = name
        self.set_level = set_level

    def read(self, addr: int, size: int) -> int:
        return all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        self.set_level(addr - IRQ_PORT, 1 if value & 0xFF else 0)


class PcTestIomem:
    def __init__(self, name: str = "pc-testdev-iomem") -> None:
        self.name = name
        self.mem = bytearray(IOMEM_LEN)

    def read(self, addr: int, size: int) -> int:
        off = addr - IOMEM_BASE
        return int.from_bytes(self.mem[off:off + size], "little")

    def write(self, addr: int, size: int, value: int) -> None:
        off = addr - IOMEM_BASE
        self.mem[off:off + size] = value.to_bytes(size, "little")
