"""Which guest RAM a core file holds, and at which virtual addresses.

The page tables a core is laid out by belong to the guest, and a hostile guest can make
them map one physical page at millions of virtual addresses (the same 1 GiB or 2 MiB page
in every slot, the same table under every entry, a table that points at itself).  A core
that wrote every alias would head for terabytes.  So here each physical page of guest RAM
is placed at most once, at the first virtual address (in address order) that maps it, and
the core can never hold more than guest RAM:

- a table met again at the same level is not walked again: its leaves map the pages its
  first visit already placed;
- leaves are clipped to RAM and to the pages not placed yet (a bitmap, one byte per page);
- the walk visits at most ``max_entries`` present entries and stops after ``seconds``
  (:class:`WalkLimit`); the caller then falls back to the physical layout (virtual =
  physical), which is bounded by RAM too.

Pure logic over a table reader; ``tests/unit/test_coremap.py`` feeds it hostile tables.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator

from pyvmm.errors import PyvmmError
from pyvmm.x86.paging import ADDR_MASK, PTE_P, PTE_PS

PAGE = 4096
_ENTRIES = struct.Struct("<512Q")
_SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}
#: present entries one walk may visit (a real guest's tables have far fewer)
MAX_ENTRIES = 1 << 20
#: seconds one walk may take
WALK_SECONDS = 10.0

Segment = tuple[int, int, int]  # (virtual address, physical address, size)


class WalkLimit(PyvmmError):
    """The guest's page tables need more entries or time than a core's walk may spend."""


class _Placed:
    """Which pages of each RAM range a segment already holds: one byte per page."""

    def __init__(self, ram: list[tuple[int, int]]) -> None:
        self.ranges = [(base, size, bytearray(-(-size // PAGE))) for base, size in ram if size > 0]

    def take(self, pa: int, size: int) -> Iterator[tuple[int, int]]:
        """The runs ``[lo, hi)`` of ``[pa, pa+size)`` that are RAM and not placed yet, in
        address order; they count as placed from here on."""
        for base, length, flags in self.ranges:
            lo, hi = max(pa, base), min(pa + size, base + length)
            if lo >= hi:
                continue
            a, b = (lo - base) // PAGE, -(-(hi - base) // PAGE)
            i = a
            while i < b:
                j = flags.find(1, i, b)
                end = b if j < 0 else j
                if end > i:
                    flags[i:end] = b"\x01" * (end - i)
                    yield base + i * PAGE, min(base + end * PAGE, hi)
                if j < 0:
                    break
                k = flags.find(0, j, b)
                if k < 0:
                    break
                i = k


def core_segments(read_table: Callable[[int], bytes | None], cr3: int,
                  ram: list[tuple[int, int]], *, max_entries: int = MAX_ENTRIES,
                  seconds: float = WALK_SECONDS,
                  clock: Callable[[], float] = time.monotonic) -> list[Segment]:
    """``(va, pa, size)`` runs of guest RAM as the 4-level tables at ``cr3`` map it, each
    physical page at most once, in virtual-address order, merged where both addresses run
    on.  ``read_table(pa)`` returns the 4 KiB table at ``pa`` or None (not RAM: that
    subtree is skipped).  WalkLimit past ``max_entries`` present entries or ``seconds``."""
    placed = _Placed(ram)
    out: list[Segment] = []
    seen: set[tuple[int, int]] = set()
    left = max_entries
    deadline = clock() + seconds

    def place(va: int, pa: int, size: int) -> None:
        for lo, hi in placed.take(pa, size):
            v = va + (lo - pa)
            if v >= 1 << 47:
                v |= 0xFFFF_0000_0000_0000  # the upper canonical half
            if out and out[-1][0] + out[-1][2] == v and out[-1][1] + out[-1][2] == lo:
                out[-1] = (out[-1][0], out[-1][1], out[-1][2] + hi - lo)
            else:
                out.append((v, lo, hi - lo))

    def walk(base: int, level: int, va: int) -> None:
        nonlocal left
        if (base, level) in seen:
            return
        seen.add((base, level))
        if clock() > deadline:
            raise WalkLimit(f"walking the page tables at {cr3:#x} took over {seconds:g} s")
        data = read_table(base)
        if data is None or len(data) != PAGE:
            return
        shift = _SHIFT[level]
        for i, e in enumerate(_ENTRIES.unpack(data)):
            if not e & PTE_P:
                continue
            left -= 1
            if left < 0:
                raise WalkLimit(f"the page tables at {cr3:#x} map more than {max_entries} "
                                "entries")
            here = va | (i << shift)
            if level == 1 or (level in (3, 2) and e & PTE_PS):
                span = 1 << shift
                place(here, e & ADDR_MASK & ~(span - 1), span)
            else:
                walk(e & ADDR_MASK, level - 1, here)

    walk(cr3 & ADDR_MASK, 4, 0)
    return out


def physical_segments(ram: list[tuple[int, int]]) -> list[Segment]:
    """The layout without paging (or when the walk gave up): RAM at va = pa."""
    return [(base, base, size) for base, size in ram if size > 0]
