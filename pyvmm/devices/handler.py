"""``PortHandler``: two Python callables as a device (``Machine.add_handler``)."""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.devices.base import Device, VcpuContext, all_ones

#: ``read(addr, size) -> value`` and ``write(addr, size, value)``, absolute addresses
ReadFn = Callable[[int, int], int]
WriteFn = Callable[[int, int, int], None]


class PortHandler(Device):
    """Adapts ``read(addr, size)`` and ``write(addr, size, value)`` to the :class:`Device`
    interface; a direction with no callable reads all-ones or drops the write.  The bus
    hands devices offsets; the callables get absolute addresses (``base`` + offset), as
    ``Machine.add_handler`` promises."""

    def __init__(self, name: str, read: ReadFn | None, write: WriteFn | None, base: int = 0) -> None:
        self.name = name
        self._read = read
        self._write = write
        self.base = base

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        return self._read(self.base + addr, size) if self._read else all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if self._write:
            self._write(self.base + addr, size, value)
