"""A guest's symbols, for naming the code at a guest address (crash reports, exception
events, debuggers).

Decoding is deferred to the first lookup: most runs never crash, and the decoder
(pyelftools) is the costliest import on ``pyvmm run``'s path.  Lookups are confined to the
image's executable ranges, so an address outside them (a wild RIP) gets no name instead of
"the nearest label plus a huge offset".
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Sequence


class Symbols:
    """``(address, size, name)`` entries; size 0 for labels (they cover up to the next
    symbol, within the executable ranges)."""

    def __init__(self, entries: Sequence[tuple[int, int, str]] = (),
                 ranges: Sequence[tuple[int, int]] = ()) -> None:
        self._decode: Callable[[], Sequence[tuple[int, int, str]]] | None = None
        self._entries: list[tuple[int, int, str]] = sorted(set(entries))
        self._addrs = [e[0] for e in self._entries]
        self.ranges = list(ranges)

    @classmethod
    def lazy(cls, decode: Callable[[], Sequence[tuple[int, int, str]]],
             ranges: Sequence[tuple[int, int]] = ()) -> Symbols:
        s = cls((), ranges)
        s._decode = decode
        return s

    @classmethod
    def from_list(cls, syms: Sequence[tuple[int, int, str]]) -> Symbols:
        return cls(syms)

    @property
    def entries(self) -> list[tuple[int, int, str]]:
        if self._decode is not None:
            decode, self._decode = self._decode, None
            try:
                entries = decode()
            except Exception:  # a symbol table pyelftools cannot read: no names, no crash
                entries = []
            self._entries = sorted(set(entries))
            self._addrs = [e[0] for e in self._entries]
        return self._entries

    def _in_image(self, addr: int) -> bool:
        return not self.ranges or any(a <= addr < b for a, b in self.ranges)

    def lookup(self, addr: int) -> str | None:
        """``"name+0x1f"`` for the symbol covering ``addr`` (or the nearest label below it,
        inside the image), None when no symbol covers it."""
        entries = self.entries
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        start, size, name = entries[i]
        covered = addr < start + size if size else self._in_image(addr)
        if not covered:
            return None
        off = addr - start
        return name if off == 0 else f"{name}+{off:#x}"

    def address_of(self, name: str) -> int | None:
        for addr, _size, n in self.entries:
            if n == name:
                return addr
        return None
