"""QEMU's fw_cfg, legacy I/O interface: a 16-bit selector write to 0x510, then byte reads
from 0x511 stream the selected item.  Items: signature, id, RAM size, CPU counts; any
other key reads as zeros."""

from __future__ import annotations

import struct

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.fastpath import Space

FW_CFG_PORT_SEL = 0x510
FW_CFG_PORT_DATA = 0x511
#: the registers as offsets into the device's ports (what the bus hands it)
SEL, DATA = 0, FW_CFG_PORT_DATA - FW_CFG_PORT_SEL
SIGNATURE, ID, RAM_SIZE, NB_CPUS, MAX_CPUS = 0x00, 0x01, 0x03, 0x05, 0x0F


class FwCfg(Device):
    state_limits = {"key": 0xFFFF}
    state_fixed = ("items",)  # the machine's description, not state

    def __init__(self, ram_size: int, ncpus: int, max_cpus: int | None = None,
                 name: str = "fw_cfg") -> None:
        self.name = name
        self.items: dict[int, bytes] = {
            SIGNATURE: b"QEMU",
            ID: struct.pack("<I", 1),  # bit 0: the traditional interface
            RAM_SIZE: struct.pack("<Q", ram_size),
            NB_CPUS: struct.pack("<H", ncpus),
            MAX_CPUS: struct.pack("<H", max_cpus or ncpus),
        }
        self.key = 0
        self.offset = 0

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, FW_CFG_PORT_SEL, 2)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        if addr != DATA:
            return self.key
        item = self.items.get(self.key, b"")
        out = 0
        for i in range(size):
            b = item[self.offset] if self.offset < len(item) else 0
            out |= b << (8 * i)
            self.offset += 1
        return out

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if addr == SEL:
            self.key = value & 0xFFFF
            self.offset = 0
