"""What every loader produces: a :class:`LoadPlan`, applied by ``Machine.load``.

A plan is data only: the bytes to write where (segments, boot structures, modules), the
vCPU's :class:`~pyvmm.x86.entry.EntryState`, the symbols, the command line the guest sees,
and the loader's own layout (for tests and ``pyvmm run -v``).  Nothing touches the VM
until ``Machine.load(plan)``.
"""

from __future__ import annotations

from pyvmm.loader.symbols import Symbols
from pyvmm.record import Record
from pyvmm.x86.entry import EntryState

# not typing.TYPE_CHECKING: importing typing costs every run (pyvmm.record); mypy knows the name
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol

    class Layout(Protocol):
        def describe(self) -> list[str]: ...


class LoadPlan(Record):
    _fields = ("path", "format", "entry", "writes", "symbols", "cmdline", "layout", "segments")

    def __init__(self, path: str, format: str, entry: EntryState,
                 writes: list[tuple[int, bytes | memoryview]], symbols: Symbols, cmdline: str,
                 layout: Layout, segments: list[tuple[int, int]] | None = None) -> None:
        self.path = path
        self.format = format
        self.entry = entry
        self.writes = writes
        self.symbols = symbols
        self.cmdline = cmdline
        self.layout = layout
        #: (paddr, end) of each segment
        self.segments: list[tuple[int, int]] = [] if segments is None else segments

    def describe(self) -> list[str]:
        """Lines for ``pyvmm run -v``: format, entry, segments, the loader's layout."""
        lines = [f"{self.path}: {self.format}, entry {self.entry.describe()}"]
        lines += [f"  segment {a:#x}-{b:#x}" for a, b in self.segments]
        return lines + [f"  {line}" for line in self.layout.describe()]
