"""The ELF64 *loader*: pyvmm's boot convention, where the VMM's structures go and what they
contain.  (The ELF *parser* it uses, for every ELF file, is :mod:`pyvmm.loader.elf`.)

The vCPU starts at ``e_entry`` in 64-bit mode with paging on; the page tables identity-map
the first 4 GiB (RAM and MMIO holes; the hole 3-4 GiB uncached) and all RAM above it.
CS/DS/SS are flat (GDT: 0x08 code64, 0x10 data, 0x18 code32), interrupts are off, RSP is
the 16-byte-aligned top of a stack of at least 64 KiB, and RDI holds the guest-physical
address of the boot-info block below.

The VMM's own block (GDT, boot info, memory map, command line, page tables) and the stack
are placed in the highest free RAM below 4 GiB that no segment uses, leaving low memory
to the guest.  The memory map reports them as type 2 (reserved).

Boot info (little-endian)::

    0  u32 magic = 0x4D565950 ("PYVM")   4  u32 version = 1
    8  u64 ram_size                      16 u64 mmap_addr
    24 u32 mmap_count                    28 u32 ncpus
    32 u64 cmdline_addr (NUL-terminated) 40 u32 cmdline_len    44 u32 reserved
    48 u64 stack_base                    56 u64 stack_size
    64 u64 vmm_base                      72 u64 vmm_size       (80 bytes)

Memory-map entry (24 bytes): u64 base, u64 length, u32 type (1 RAM, 2 reserved), u32 0.
"""

from __future__ import annotations

import functools
import struct

from pyvmm.errors import ConfigError, GuestImageError
from pyvmm.loader.elf import ELFCLASS64, EM_X86_64, ET_EXEC, MACHINES, LoadSegment, parse
from pyvmm.loader.linux import linux_program
from pyvmm.loader.plan import LoadPlan
from pyvmm.loader.source import ImageBytes
from pyvmm.loader.symbols import Symbols
from pyvmm.record import Record
from pyvmm.x86.entry import EntryState
from pyvmm.x86.layout import E820_RAM, E820_RESERVED, MMIO_HOLE_END, MMIO_HOLE_START, GiB
from pyvmm.x86.paging import (
    PAGE_2M,
    PAGE_4K,
    PTE_P,
    PTE_PCD,
    PTE_PWT,
    PTE_RW,
    PageTableBuilder,
    PagingError,
)
from pyvmm.x86.segments import GDT_SIZE, gdt_bytes

BOOT_MAGIC = 0x4D565950
BOOT_VERSION = 1
BOOT_INFO = struct.Struct("<IIQQIIQIIQQQQ")
MMAP_ENTRY = struct.Struct("<QQII")
MIN_STACK = 64 * 1024
DEFAULT_STACK = 256 * 1024
MAX_CMDLINE = 4096
MAX_MMAP = 32


def _up(x: int, a: int) -> int:
    return (x + a - 1) // a * a


def _down(x: int, a: int) -> int:
    return x // a * a


class BootPlan(Record):
    """Where the VMM's structures go, and the bytes to write there."""

    _fields = ("vmm_base", "vmm_size", "stack_base", "stack_size", "gdt_addr", "info_addr",
               "cmdline_addr", "cr3", "writes", "memory_map")

    def __init__(self, vmm_base: int, vmm_size: int, stack_base: int, stack_size: int,
                 gdt_addr: int, info_addr: int, cmdline_addr: int, cr3: int,
                 writes: list[tuple[int, bytes]] | None = None,
                 memory_map: list[tuple[int, int, int]] | None = None) -> None:
        self.vmm_base = vmm_base
        self.vmm_size = vmm_size
        self.stack_base = stack_base
        self.stack_size = stack_size
        self.gdt_addr = gdt_addr
        self.info_addr = info_addr
        self.cmdline_addr = cmdline_addr
        self.cr3 = cr3
        self.writes: list[tuple[int, bytes]] = [] if writes is None else writes
        self.memory_map: list[tuple[int, int, int]] = [] if memory_map is None else memory_map

    @property
    def stack_top(self) -> int:
        return self.stack_base + self.stack_size

    def describe(self) -> list[str]:
        return [f"VMM block {self.vmm_base:#x}+{self.vmm_size:#x} (GDT, boot info "
                f"{self.info_addr:#x}, page tables, CR3 {self.cr3:#x})",
                f"stack {self.stack_base:#x}-{self.stack_top:#x}"]


class ElfImage(Record):
    """An ELF64 x86-64 executable, booted by pyvmm's convention (this module's doc)."""

    _fields = ("path", "entry", "segments", "symbols")
    format = "elf64"

    def __init__(self, path: str, entry: int, segments: list[LoadSegment],
                 symbols: Symbols) -> None:
        self.path = path
        self.entry = entry
        self.segments = segments
        self.symbols = symbols

    def plan(self, ram: list[tuple[int, int]], *, cmdline: bytes = b"", ncpus: int = 1,
             initrd: bytes | None = None, initrd_name: str = "") -> LoadPlan:
        """Place the VMM's structures around the segments; the BSP starts at ``e_entry``
        in long mode with RDI = the boot info."""
        if initrd is not None:
            raise ConfigError("--initrd is for multiboot kernels; pyvmm's ELF64 guests get "
                              "their input through the command line or memory")
        boot = plan_boot(ram, self.segments, cmdline, ncpus, self.path)
        entry = EntryState.long_mode(self.entry, cr3=boot.cr3, gdt_base=boot.gdt_addr,
                                     rsp=boot.stack_top, rdi=boot.info_addr)
        writes = [(s.paddr, s.data) for s in self.segments] + boot.writes
        return LoadPlan(self.path, self.format, entry, writes, self.symbols,
                        cmdline.decode("utf-8", "backslashreplace"), boot,
                        [(s.paddr, s.end) for s in self.segments])


def parse_elf64(data: ImageBytes, name: str = "<guest>") -> ElfImage:
    """Check an ELF64 x86-64 executable.  Raises :class:`GuestImageError`."""
    if data[:4] == b"\x7fELF" and data[4:5] != bytes([ELFCLASS64]):
        raise GuestImageError(f"{name}: ELFCLASS32 image; pyvmm runs ELF64 (ELFCLASS64) guests")
    elf = parse(data, name)
    why = linux_program(elf)
    if why is not None:
        raise GuestImageError(
            f"{name}: a Linux user-space program ({why}), not a guest kernel: pyvmm boots "
            "kernels, such as C built against its guest runtime with `pyvmm guest build -o "
            "guest.elf guest.c` (see docs/guests.md)")
    if elf.machine != EM_X86_64:
        raise GuestImageError(f"{name}: machine {MACHINES.get(elf.machine, elf.machine)}, pyvmm "
                              "runs x86-64 (EM_X86_64) guests")
    if elf.type != ET_EXEC:
        raise GuestImageError(f"{name}: ELF type {elf.type} is not ET_EXEC; link the guest as "
                              "a static executable (-static -no-pie)")
    seg = next((s for s in elf.segments if s.vaddr <= elf.entry < s.vaddr + s.memsz), None)
    if seg is None or not seg.executable:
        raise GuestImageError(
            f"{name}: entry point {elf.entry:#x} is not inside an executable loaded segment")
    return ElfImage(name, elf.entry, elf.segments, elf.symbols())


def _free_ranges(ram: list[tuple[int, int]], used: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """RAM minus ``used`` (both as (start, end)), page-aligned, sorted."""
    free = []
    for start, size in ram:
        pieces = [(start, start + size)]
        for us, ue in used:
            nxt = []
            for a, b in pieces:
                if ue <= a or us >= b:
                    nxt.append((a, b))
                else:
                    if a < us:
                        nxt.append((a, us))
                    if ue < b:
                        nxt.append((ue, b))
            pieces = nxt
        free += [(_up(a, PAGE_4K), _down(b, PAGE_4K)) for a, b in pieces]
    return sorted((a, b) for a, b in free if b > a)


def _table_count(ram: list[tuple[int, int]], segments: list[LoadSegment]) -> int:
    top = max(MMIO_HOLE_END, max(s + z for s, z in ram))
    pds = _up(top, GiB) // GiB
    pdpts = _up(top, 512 * GiB) // (512 * GiB)
    extra = sum(3 + _up(s.memsz, PAGE_2M) // PAGE_2M for s in segments if s.vaddr != s.paddr)
    return 1 + pdpts + pds + extra


def plan_boot(ram: list[tuple[int, int]], segments: list[LoadSegment], cmdline: bytes,
              ncpus: int, name: str = "guest") -> BootPlan:
    """Check the segments against RAM and place the VMM's structures around them.

    ``ram`` is ``[(gpa, size)]``.  Raises :class:`GuestImageError` when a segment is not
    wholly inside RAM or when the segments leave no room for the structures.
    """
    for s in segments:
        if not any(a <= s.paddr and s.end <= a + z for a, z in ram):
            ram_desc = ", ".join(f"{a:#x}-{a + z:#x}" for a, z in ram)
            raise GuestImageError(
                f"{name}: segment {s.index} ({s.paddr:#x}-{s.end:#x}) lies outside guest RAM "
                f"({ram_desc}); give the guest more memory (--mem) or relink it")
    if len(cmdline) >= MAX_CMDLINE:
        raise ConfigError(f"command line too long ({len(cmdline)} bytes, max {MAX_CMDLINE - 1})")
    ntables = _table_count(ram, segments)
    # page 0: GDT + boot info + memory map (+ a short command line); page 1: a long
    # command line; then the page tables
    vmm_size = (2 + ntables) * PAGE_4K
    used = [(s.paddr, s.end) for s in segments]
    low = [(a, min(b, MMIO_HOLE_START)) for a, b in _free_ranges(ram, used) if a < MMIO_HOLE_START]
    low = [(a, b) for a, b in low if b > a]
    # the highest free range wins: low memory stays free for the guest
    for a, b in reversed(low):
        room = b - a - vmm_size
        if room >= MIN_STACK:
            stack = min(DEFAULT_STACK, _down(room, PAGE_4K))
            stack_base = b - stack
            vmm_base = stack_base - vmm_size
            break
    else:
        raise GuestImageError(
            f"{name}: the segments leave no free RAM below 3 GiB for the VMM's structures "
            f"({vmm_size // 1024} KiB) and a {MIN_STACK // 1024} KiB stack; give the guest "
            "more memory (--mem)")
    high = tuple((s.index, s.vaddr, s.paddr, s.memsz) for s in segments if s.vaddr != s.paddr)
    table_base = vmm_base + 2 * PAGE_4K
    tables = _page_tables(table_base, tuple(ram), high, ntables, name)
    mmap = memory_map(ram, [(vmm_base, vmm_base + vmm_size + stack)])
    mm = b"".join(MMAP_ENTRY.pack(b, n, t, 0) for b, n, t in mmap)
    mmap_addr = vmm_base + GDT_SIZE + BOOT_INFO.size
    # the command line follows the memory map in page 0 when it fits there (one page of
    # guest RAM fewer to fault in per machine), else it has page 1 to itself
    cmdline_addr = mmap_addr + len(mm)
    if cmdline_addr + len(cmdline) + 1 > vmm_base + PAGE_4K:
        cmdline_addr = vmm_base + PAGE_4K
    plan = BootPlan(vmm_base, vmm_size, stack_base, stack, vmm_base, vmm_base + GDT_SIZE,
                    cmdline_addr, table_base)
    plan.memory_map = mmap
    info = BOOT_INFO.pack(BOOT_MAGIC, BOOT_VERSION, sum(z for _, z in ram), mmap_addr,
                          len(plan.memory_map), ncpus, plan.cmdline_addr, len(cmdline), 0,
                          stack_base, stack, vmm_base, vmm_size)
    plan.writes = [(plan.gdt_addr, gdt_bytes()), (plan.info_addr, info), (mmap_addr, mm),
                   (plan.cmdline_addr, cmdline + b"\0"), (table_base, tables)]
    return plan


@functools.lru_cache(maxsize=16)
def _page_tables(base: int, ram: tuple[tuple[int, int], ...],
                 high: tuple[tuple[int, int, int, int], ...], ntables: int, name: str) -> bytes:
    """The page-table block at ``base``: identity maps of the low 4 GiB (the hole uncached)
    and of RAM above it, plus ``high`` segments ``(index, vaddr, paddr, memsz)`` at their
    virtual addresses.  Cached: machines made by the thousand share a few layouts, and
    building the tables costs ~0.3 ms of Python."""
    tables = PageTableBuilder(base, max_tables=ntables)
    tables.identity_map(0, MMIO_HOLE_START, page_size=PAGE_2M)
    tables.identity_map(MMIO_HOLE_START, MMIO_HOLE_END - MMIO_HOLE_START, page_size=PAGE_2M,
                        flags=PTE_P | PTE_RW | PTE_PCD | PTE_PWT)
    for a, z in ram:
        if a >= MMIO_HOLE_END:
            tables.identity_map(a, _up(z, PAGE_2M), page_size=PAGE_2M)
    for index, vaddr, paddr, memsz in high:
        if (vaddr - paddr) % PAGE_4K or vaddr < MMIO_HOLE_END:
            raise GuestImageError(
                f"{name}: segment {index} has p_vaddr {vaddr:#x} != p_paddr {paddr:#x}; "
                "pyvmm maps such segments only above 4 GiB and 4 KiB-congruent")
        start = _down(vaddr, PAGE_4K)
        try:
            tables.map(start, _down(paddr, PAGE_4K), _up(vaddr + memsz, PAGE_4K) - start,
                       page_size=PAGE_4K)
        except PagingError as e:
            raise GuestImageError(f"{name}: segment {index} cannot be mapped at {vaddr:#x}: "
                                  f"{e}") from None
    return tables.to_bytes()


def memory_map(ram: list[tuple[int, int]], reserved: list[tuple[int, int]]) -> list[tuple[int, int, int]]:
    """e820-style map: RAM split around ``reserved`` ranges (type 2)."""
    out = [(a, b - a, E820_RAM) for a, b in _free_ranges(ram, reserved)]
    out += [(a, b - a, E820_RESERVED) for a, b in reserved]
    out.sort()
    if len(out) > MAX_MMAP:
        raise GuestImageError("memory map too large")
    return out
