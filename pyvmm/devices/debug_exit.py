"""QEMU's isa-debug-exit: a 1/2/4-byte write ends the run; the value is the exit status."""

from __future__ import annotations

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.bus import WRITE, Action, FastEntry, GuestStop, Space

DEBUG_EXIT_PORT = 0xF4


class DebugExit(Device):
    state_fixed = ("port",)

    def __init__(self, port: int = DEBUG_EXIT_PORT, name: str = "debug-exit") -> None:
        self.name = name
        self.port = port

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, self.port, 4)]

    def fast_entries(self) -> list[FastEntry]:
        return [FastEntry(Space.PIO, self.port, 4, WRITE, Action.STOP, self)]

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        raise GuestStop(value, "debug-exit")
