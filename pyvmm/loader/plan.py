"""What every loader produces: a :class:`LoadPlan`, applied by ``Machine.load``.

A plan is data only: the bytes to write where (segments, boot structures, modules), the
vCPU's :class:`~pyvmm.x86.entry.EntryState`, the symbols, the command line the guest sees,
and the loader's own layout (for tests and ``pyvmm run -v``).  Nothing touches the VM
until ``Machine.load(plan)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from pyvmm.loader.symbols import Symbols
from pyvmm.x86.entry import EntryState


class Layout(Protocol):
    def describe(self) -> list[str]: ...


@dataclass
class LoadPlan:
    path: str
    format: str
    entry: EntryState
    writes: list[tuple[int, bytes | memoryview]]
    symbols: Symbols
    cmdline: str
    layout: Layout
    segments: list[tuple[int, int]] = field(default_factory=list)  # (paddr, end) of each

    def describe(self) -> list[str]:
        """Lines for ``pyvmm run -v``: format, entry, segments, the loader's layout."""
        lines = [f"{self.path}: {self.format}, entry {self.entry.describe()}"]
        lines += [f"  segment {a:#x}-{b:#x}" for a, b in self.segments]
        return lines + [f"  {line}" for line in self.layout.describe()]
