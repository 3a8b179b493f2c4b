"""PCI configuration mechanism #1 with no devices: what a kernel's PCI probe finds empty."""

from __future__ import annotations

from pyvmm.devices.base import Device, VcpuContext, all_ones
from pyvmm.devices.fastpath import Space

PCI_CONFIG_ADDRESS = 0xCF8
PCI_CONFIG_DATA = 0xCFC


class PciConfigMech1(Device):
    """0xcf8 holds the address; 0xcfc-0xcff read all-ones: no device on any bus."""

    state_limits = {"address": 0xFFFFFFFF}

    def __init__(self, name: str = "pci-config") -> None:
        self.name = name
        self.address = 0

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, PCI_CONFIG_ADDRESS, 8)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        if addr == 0 and size == 4:  # offset 0: CONFIG_ADDRESS
            return self.address
        return all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if addr == 0 and size == 4:
            self.address = value & 0x80FFFFFC
