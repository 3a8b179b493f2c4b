"""Port 0x80, the POST-code port: guests write it as a delay or a progress mark.

A counter entry in the C fast table keeps the last code and the number of writes without
ever returning to Python.
"""

from __future__ import annotations

from pyvmm.devices.bus import READ, WRITE, Action, FastEntry, Space, all_ones

POST_PORT = 0x80


class PostPort:
    def __init__(self, port: int = POST_PORT, name: str = "post") -> None:
        self.name = name
        self.port = port
        self.last = 0
        self.writes = 0
        self.entry = FastEntry(Space.PIO, port, 1, READ | WRITE, Action.COUNTER, self,
                               read_value=0xFF)

    def fast_entries(self) -> list[FastEntry]:
        return [self.entry]

    def read(self, addr: int, size: int) -> int:
        return all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        self.last = value
        self.writes += 1
