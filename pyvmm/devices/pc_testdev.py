"""QEMU's pc-testdev, as kvm-unit-tests use it.

- port 0xe0: a 32-bit scratch register (1/2/4-byte access);
- port 0xe4: "flush page": a 4-byte write of a guest-physical address makes the host drop
  that page's mapping, so the guest's next access faults into KVM again (the host PTE is
  zapped with its contents kept: other vCPU threads may be reading the page meanwhile);
- ports 0x2000-0x2017: ISA IRQ lines; a byte write sets the line's level (KVM_IRQ_LINE);
- MMIO 0xff000000, 64 KiB of device memory: every access exits, reads give back what was
  written.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.devices.base import Device, VcpuContext, all_ones
from pyvmm.devices.fastpath import Space
from pyvmm.errors import GuestIoError
from pyvmm.memory import GuestMemory

SCRATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
IRQ_PORT = 0x2000
IRQ_LINES = 24
IOMEM_BASE = 0xFF000000
IOMEM_LEN = 0x10000


class PcTestScratch(Device):
    state_limits = {"value": 0xFFFFFFFF}

    def __init__(self, name: str = "pc-testdev") -> None:
        self.name = name
        self.value = 0

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, SCRATCH_PORT, 4)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        return self.value & all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        self.value = value & all_ones(size)


class PcTestFlush(Device):
    def __init__(self, memory: GuestMemory, name: str = "pc-testdev-flush") -> None:
        self.name = name
        self.memory = memory
        self.flushes = 0

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, FLUSH_PORT, 4)]

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        # the address is the guest's: an address that is not RAM is ignored
        if self.memory.drop_page(value):
            self.flushes += 1


class PcTestIrq(Device):
    """``set_level(gsi, level)`` is KVM_IRQ_LINE, or None when the VM has no in-kernel
    irqchip: then a write is a guest I/O error that says so."""

    def __init__(self, set_level: Callable[[int, int], object] | None,
                 name: str = "pc-testdev-irq") -> None:
        self.name = name
        self.set_level = set_level

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, IRQ_PORT, IRQ_LINES)]

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        line = addr  # port IRQ_PORT + n is line n
        if self.set_level is None:
            raise GuestIoError(f"the guest set pc-testdev IRQ line {line} (port {IRQ_PORT + line:#x}), but "
                               "this VM has no in-kernel irqchip to raise it on (--irqchip none)")
        self.set_level(line, 1 if value & 0xFF else 0)


class PcTestIomem(Device):
    def __init__(self, name: str = "pc-testdev-iomem") -> None:
        self.name = name
        self.mem = bytearray(IOMEM_LEN)

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.MMIO, IOMEM_BASE, IOMEM_LEN)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        off = addr
        return int.from_bytes(self.mem[off:off + size], "little")

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        off = addr
        self.mem[off:off + size] = value.to_bytes(size, "little")
