"""4-level (IA-32e) page-table builder, Intel SDM vol. 3A ch. 4.5.

The builder lays tables out in one contiguous block at a guest-physical base, so the
loader can place the block anywhere free and write it with one bounds-checked copy.  It
maps 4 KiB pages (PTE) and 2 MiB pages (PDE with PS); 1 GiB pages are deliberately not
offered (kvm_pvm rejects them, HOST-KVM.md).
"""

from __future__ import annotations

import struct
from array import array
from collections.abc import Callable

from pyvmm.errors import PyvmmError
from pyvmm.x86.modes import (
    PAGING_4LEVEL,
    PAGING_32BIT,
    PAGING_32BIT_PSE,
    PAGING_NONE,
    PAGING_PAE,
)

PAGE_4K = 1 << 12
PAGE_2M = 1 << 21

PTE_P = 1 << 0
PTE_RW = 1 << 1
PTE_US = 1 << 2
PTE_PWT = 1 << 3
PTE_PCD = 1 << 4
PTE_A = 1 << 5
PTE_D = 1 << 6
PTE_PS = 1 << 7
PTE_G = 1 << 8
PTE_NX = 1 << 63
ADDR_MASK = 0x000F_FFFF_FFFF_F000

_LEVEL_SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}


def canonical(va: int) -> bool:
    """48-bit canonical: bits 63:47 all equal (the lower or the upper half)."""
    return 0 <= va < 1 << 47 or 0xFFFF_8000_0000_0000 <= va < 1 << 64


class PagingError(PyvmmError, ValueError):
    """A mapping request that 4-level paging cannot express, or a full table block."""


class PageTableBuilder:
    """Builds identity or arbitrary mappings into a table block at ``base``.

    ``max_tables`` bounds the block (each table is one 4 KiB page); :attr:`cr3` is the
    guest-physical address of the PML4.
    """

    def __init__(self, base: int, max_tables: int = 64) -> None:
        if base % PAGE_4K:
            raise PagingError(f"table base {base:#x} is not 4 KiB aligned")
        self.base = base
        self.max_tables = max_tables
        self._tables: list[bytearray] = [bytearray(PAGE_4K)]  # [0] = PML4

    @property
    def cr3(self) -> int:
        return self.base

    @property
    def size(self) -> int:
        return len(self._tables) * PAGE_4K

    def _entry(self, table: int, index: int) -> int:
        value: int = struct.unpack_from("<Q", self._tables[table], index * 8)[0]
        return value

    def _set(self, table: int, index: int, value: int) -> None:
        struct.pack_into("<Q", self._tables[table], index * 8, value)

    def _child(self, table: int, index: int) -> int:
        """Index of the next-level table under ``table[index]``, creating it if needed."""
        e = self._entry(table, index)
        if e & PTE_P:
            if e & PTE_PS:
                raise PagingError("a large page is already mapped over this range")
            return ((e & ADDR_MASK) - self.base) // PAGE_4K
        if len(self._tables) >= self.max_tables:
            raise PagingError(f"page-table block full ({self.max_tables} tables)")
        self._tables.append(bytearray(PAGE_4K))
        child = len(self._tables) - 1
        # upper levels are permissive; the leaf decides the access rights
        self._set(table, index, (self.base + child * PAGE_4K) | PTE_P | PTE_RW | PTE_US)
        return child

    def map(self, va: int, pa: int, size: int, *, page_size: int = PAGE_2M,
            flags: int = PTE_P | PTE_RW) -> None:
        """Map ``[va, va+size)`` to ``[pa, pa+size)`` with pages of ``page_size``."""
        if page_size not in (PAGE_4K, PAGE_2M):
            raise PagingError("page size must be 4 KiB or 2 MiB")
        if va % page_size or pa % page_size or size % page_size:
            raise PagingError(f"{va:#x}->{pa:#x}+{size:#x} not aligned to {page_size:#x}")
        if not (canonical(va) and canonical(va + size - 1)) or pa + size > 1 << 52:
            raise PagingError(f"{va:#x}+{size:#x} is not canonical for 4-level paging "
                              "(or the physical range exceeds 52 bits)")
        leaf_level = 2 if page_size == PAGE_2M else 1
        shift = _LEVEL_SHIFT[leaf_level]
        flags |= PTE_P | (PTE_PS if leaf_level == 2 else 0)
        off = 0
        while off < size:
            # one leaf table at a time: find it once, then fill its run of entries in bulk
            v = va + off
            table = 0
            for level in range(4, leaf_level, -1):
                table = self._child(table, (v >> _LEVEL_SHIFT[level]) & 511)
            first = (v >> shift) & 511
            count = min(512 - first, (size - off) // page_size)
            entries = memoryview(self._tables[table]).cast("Q")
            if any(entries[first:first + count]):
                raise PagingError(f"{v:#x} is already mapped")
            start = (pa + off) | flags
            entries[first:first + count] = array("Q", range(start, start + count * page_size,
                                                            page_size))
            off += count * page_size

    def identity_map(self, start: int, size: int, **kw: int) -> None:
        self.map(start, start, size, **kw)

    def to_bytes(self) -> bytes:
        return b"".join(self._tables)


def walk(read_u64: Callable[[int], int], cr3: int, va: int) -> int | None:
    """Translate ``va`` through tables reachable from ``cr3``; ``read_u64(gpa)`` reads
    memory.  Returns the physical address or None (not present).  4-level paging only:
    :func:`translate` picks the walk for a vCPU's paging mode."""
    table = cr3 & ADDR_MASK
    for level in (4, 3, 2, 1):
        e = read_u64(table + ((va >> _LEVEL_SHIFT[level]) & 511) * 8)
        if not e & PTE_P:
            return None
        if level in (3, 2) and e & PTE_PS:
            span = 1 << _LEVEL_SHIFT[level]
            return (e & ADDR_MASK & ~(span - 1)) | (va & (span - 1))
        table = e & ADDR_MASK
    return table | (va & 0xFFF)


def translate(read: Callable[[int, int], int], mode: str, cr3: int, va: int) -> int | None:
    """Guest-virtual ``va`` -> guest-physical under paging ``mode`` (``x86.modes.paging_mode``)
    with tables at ``cr3``, or None (not present, or out of the mode's reach).
    ``read(gpa, size)`` reads a little-endian entry and may raise for a table outside RAM
    (the caller's business: the guest owns these tables).  The one translation the debugger,
    the crash report and the core use (Intel SDM vol. 3A 4.3-4.5)."""
    if mode == PAGING_NONE:
        return va if 0 <= va < 1 << 32 else None
    if mode == PAGING_4LEVEL:
        return walk(lambda a: read(a, 8), cr3, va) if 0 <= va < 1 << 64 else None
    if not 0 <= va < 1 << 32:
        return None
    if mode in (PAGING_32BIT, PAGING_32BIT_PSE):  # 4-byte PDE (4 MiB with CR4.PSE and PS), PTE
        pde = read((cr3 & 0xFFFFF000) + (va >> 22) * 4, 4)
        if not pde & PTE_P:
            return None
        if pde & PTE_PS and mode == PAGING_32BIT_PSE:
            high = (pde >> 13) & 0xFF  # PSE-36: physical bits 39:32
            return (high << 32) | (pde & 0xFFC00000) | (va & 0x3FFFFF)
        pte = read((pde & 0xFFFFF000) + ((va >> 12) & 0x3FF) * 4, 4)
        return (pte & 0xFFFFF000) | (va & 0xFFF) if pte & PTE_P else None
    if mode == PAGING_PAE:  # PDPTE (4 per CR3), PDE (2 MiB with PS), PTE: 8-byte entries
        pdpte = read((cr3 & 0xFFFFFFE0) + (va >> 30) * 8, 8)
        if not pdpte & PTE_P:
            return None
        pde = read((pdpte & ADDR_MASK) + ((va >> 21) & 511) * 8, 8)
        if not pde & PTE_P:
            return None
        if pde & PTE_PS:
            return (pde & ADDR_MASK & ~(PAGE_2M - 1)) | (va & (PAGE_2M - 1))
        pte = read((pde & ADDR_MASK) + ((va >> 12) & 511) * 8, 8)
        return (pte & ADDR_MASK) | (va & 0xFFF) if pte & PTE_P else None
    return None  # 5-level paging: not walked (KVM refuses LA57 here, HOST-KVM.md)
