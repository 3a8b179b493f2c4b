"""Port 0x80, the POST-code port: guests write it as a delay or a progress mark.

Both directions are answered in C (reads 0xff; a counter entry keeps the last code), so the
port never costs a trip to Python; the loops report their counts after every run, and
:attr:`PostPort.writes` / :attr:`PostPort.last` add them up.
"""

from __future__ import annotations

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, Space

POST_PORT = 0x80


class PostPort(Device):
    state_limits = {"last": 0xFF}
    state_fixed = ("port",)

    def __init__(self, port: int = POST_PORT, name: str = "post") -> None:
        self.name = name
        self.port = port
        self.last = 0
        self.writes = 0
        self.entry = FastEntry(Space.PIO, port, 1, WRITE, Action.COUNTER, self)
        self._reads = FastEntry(Space.PIO, port, 1, READ, Action.SINK, self, read_value=0xFF)

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, self.port, 1)]

    def fast_entries(self) -> list[FastEntry]:
        return [self.entry, self._reads]

    def close(self) -> None:
        self.entry.detach()
        self._reads.detach()

    def fast_hits(self, entry: FastEntry, hits: int, last_value: int) -> None:
        if entry is self.entry:
            self.writes += hits
            self.last = last_value & 0xFF

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        return 0xFF

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        self.last = value & 0xFF
        self.writes += 1
