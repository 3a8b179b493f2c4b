"""Multiboot v1 kernels, loaded the way QEMU's ``-kernel`` does (multiboot spec 0.6.96).

The header (magic 0x1BADB002, flags, checksum) must lie 4-byte aligned in the first 8 KiB.
With flags bit 16 clear the file must be ELF32 (EM_386; the code inside may switch to
64-bit, as kvm-unit-tests' ``.flat`` files do) and is loaded by its program headers; with
bit 16 set the header's own addresses say what to load where.

Entry (:func:`plan_multiboot` gives the values): 32-bit protected mode, paging off, flat
CS/DS/ES/FS/GS/SS, A20 on, IF=0, EAX=0x2BADB002, EBX = the info block.  Placement, as in
QEMU: the memory map at 0x9000, the info block at 0x9500; modules, the module list and the
strings page-aligned after the kernel's last byte; the command line is
``"<kernel path> <append>"``.
"""

from __future__ import annotations

import os
import struct

from pyvmm.errors import GuestImageError
from pyvmm.loader.elf import ELFCLASS32, EM_386, MAGIC, LoadSegment, parse
from pyvmm.loader.mbheader import FLAG_ADDRESSES, MultibootHeader, find_header
from pyvmm.loader.plan import LoadPlan
from pyvmm.loader.source import ImageBytes
from pyvmm.loader.symbols import Symbols
from pyvmm.record import Record
from pyvmm.x86.entry import EntryState
from pyvmm.x86.layout import E820_RAM, E820_RESERVED
from pyvmm.x86.segments import gdt_bytes

BOOT_MAGIC = 0x2BADB002
FLAG_PAGE_ALIGN = 1 << 0
FLAG_MEMORY_INFO = 1 << 1
FLAG_VIDEO = 1 << 2
SUPPORTED_REQUIRED = FLAG_PAGE_ALIGN | FLAG_MEMORY_INFO | FLAG_VIDEO  # video: ignored, as QEMU

MMAP_ADDR = 0x9000  # QEMU's multiboot option ROM: the e820 map at 0x9000 ...
INFO_ADDR = 0x9500  # ... and the info block at 0x9500
INFO_SIZE = 88
#: the flat GDT for the 32-bit entry, beside the info block
GDT_OFFSET = 0x100
MBI_MEM, MBI_CMDLINE, MBI_MODS, MBI_MMAP, MBI_LOADER = 1 << 0, 1 << 2, 1 << 3, 1 << 6, 1 << 9
LOW_RAM_END = 0x9FC00  # 639 KiB: what a BIOS reports below the EBDA
BIOS_AREA = (0x9FC00, 0x100000)  # EBDA, VGA hole, option ROMs and the BIOS (ACPI lives here)


class MultibootImage(Record):
    _fields = ("path", "header", "entry", "segments", "symbols", "argv0")
    format = "multiboot"

    def __init__(self, path: str, header: MultibootHeader, entry: int,
                 segments: list[LoadSegment], symbols: Symbols | None = None,
                 argv0: bytes = b"") -> None:
        self.path = path
        self.header = header
        self.entry = entry
        self.segments = segments
        self.symbols = Symbols() if symbols is None else symbols
        #: the kernel's path as the kernel sees it (argv[0] of its command line): the bytes
        #: the user gave, which need not be UTF-8 (``path`` is for messages)
        self.argv0 = argv0

    @property
    def end(self) -> int:
        return max(s.end for s in self.segments)

    def plan(self, ram: list[tuple[int, int]], *, cmdline: bytes = b"", ncpus: int = 1,
             initrd: bytes | None = None, initrd_name: str = "initrd") -> LoadPlan:
        """As QEMU's ``-kernel PATH -append CMDLINE -initrd INITRD``: the kernel sees
        ``"PATH CMDLINE"``; the initrd is the one module, page-aligned after the kernel.
        The BSP starts in 32-bit protected mode, EAX = 0x2BADB002, EBX = the info block."""
        full = (self.argv0 or os.fsencode(self.path)) + (b" " + cmdline if cmdline else b"")
        modules = [Module(initrd, initrd_name)] if initrd is not None else []
        mb = plan_multiboot(ram, self, full, modules)
        entry = EntryState.protected_mode(self.entry, gdt_base=INFO_ADDR + GDT_OFFSET,
                                          rax=BOOT_MAGIC, rbx=mb.info_addr)
        return LoadPlan(self.path, self.format, entry, mb.writes, self.symbols,
                        full.decode("utf-8", "backslashreplace"), mb,
                        [(s.paddr, s.end) for s in self.segments])


def is_multiboot(data: bytes) -> bool:
    return find_header(data) is not None


def parse_multiboot(data: ImageBytes, name: str = "<kernel>") -> MultibootImage:
    """Validate and collect what to load.  Raises :class:`GuestImageError`."""
    hdr = find_header(data)
    if hdr is None:
        raise GuestImageError(f"{name}: no multiboot header (magic 0x1BADB002) in the first 8 KiB")
    unknown = hdr.flags & 0xFFFF & ~SUPPORTED_REQUIRED
    if unknown:
        raise GuestImageError(f"{name}: multiboot header requires features {unknown:#x} "
                              "that pyvmm does not provide")
    if hdr.flags & FLAG_ADDRESSES:
        return _by_header(data, hdr, name)
    return _by_elf(data, hdr, name)


def _by_header(data: ImageBytes, hdr: MultibootHeader, name: str) -> MultibootImage:
    if hdr.header_addr < hdr.load_addr or hdr.offset < hdr.header_addr - hdr.load_addr:
        raise GuestImageError(f"{name}: multiboot header addresses are inconsistent "
                              f"(header_addr {hdr.header_addr:#x} < load_addr {hdr.load_addr:#x})")
    file_off = hdr.offset - (hdr.header_addr - hdr.load_addr)
    load_end = hdr.load_end_addr or hdr.load_addr + len(data) - file_off
    if load_end < hdr.load_addr or file_off + (load_end - hdr.load_addr) > len(data):
        raise GuestImageError(f"{name}: multiboot load_end_addr {load_end:#x} is past the file")
    bss_end = max(hdr.bss_end_addr, load_end)
    seg = LoadSegment(0, hdr.load_addr, hdr.load_addr, bss_end - hdr.load_addr,
                      data[file_off:file_off + load_end - hdr.load_addr], 7)
    if not hdr.load_addr <= hdr.entry_addr < bss_end:
        raise GuestImageError(f"{name}: multiboot entry {hdr.entry_addr:#x} is outside the image")
    return MultibootImage(name, hdr, hdr.entry_addr, [seg])


def _by_elf(data: ImageBytes, hdr: MultibootHeader, name: str) -> MultibootImage:
    if data[:4] != MAGIC:
        raise GuestImageError(f"{name}: multiboot header without load addresses (flag 16) "
                              "needs an ELF file")
    elf = parse(data, name)
    if elf.elfclass != ELFCLASS32 or elf.machine != EM_386:
        raise GuestImageError(f"{name}: a multiboot ELF must be ELF32 EM_386 (as QEMU "
                              "requires; objcopy -O elf32-i386 converts a 64-bit build)")
    if not any(s.paddr <= elf.entry < s.end for s in elf.segments):
        raise GuestImageError(f"{name}: entry {elf.entry:#x} is not inside a loaded segment")
    return MultibootImage(name, hdr, elf.entry, elf.segments, elf.symbols())


class Module(Record):
    _fields = ("data", "cmdline")

    def __init__(self, data: bytes, cmdline: str) -> None:
        self.data = data
        self.cmdline = cmdline


class MultibootPlan(Record):
    _fields = ("info_addr", "writes", "memory_map", "modules")

    def __init__(self, info_addr: int, writes: list[tuple[int, bytes | memoryview]],
                 memory_map: list[tuple[int, int, int]], modules: list[tuple[int, int]]) -> None:
        self.info_addr = info_addr
        self.writes = writes
        self.memory_map = memory_map
        self.modules = modules  # (start, end) of each module

    def describe(self) -> list[str]:
        mods = ", ".join(f"{s:#x}-{e:#x}" for s, e in self.modules) or "none"
        return [f"multiboot info {self.info_addr:#x}, modules: {mods}"]


def plan_multiboot(ram: list[tuple[int, int]], image: MultibootImage, cmdline: bytes,
                   modules: list[Module]) -> MultibootPlan:
    """Check the image against RAM and lay it out as QEMU's -kernel does: the memory map at
    0x9000 and the info block at 0x9500 (with the entry GDT beside it), then the kernel's
    own segments, then, page-aligned after the kernel, the modules, the module list and
    the strings (command line, module names, boot-loader name).

    A kernel whose segments cover 0x9000-0xFFFF (one linked at 0x8000, say) is loaded all
    the same, its bytes written after the info block, as QEMU's do: never refuse what QEMU
    boots, and boot it the same way."""
    name = image.path
    for s in image.segments:
        if not any(a <= s.paddr and s.end <= a + z for a, z in ram):
            raise GuestImageError(f"{name}: segment {s.index} ({s.paddr:#x}-{s.end:#x}) lies "
                                  "outside guest RAM; give the guest more memory (--mem)")
    low_end = next(a + z for a, z in ram if a == 0)
    mmap = [(0, LOW_RAM_END, E820_RAM), (BIOS_AREA[0], BIOS_AREA[1] - BIOS_AREA[0], E820_RESERVED),
            (0x100000, low_end - 0x100000, E820_RAM)]
    mmap += [(a, z, E820_RAM) for a, z in ram if a >= 1 << 32]
    tail: list[tuple[int, bytes | memoryview]] = []
    pending: list[tuple[int, int, bytes]] = []
    cursor = (image.end + 0xFFF) & ~0xFFF
    for mod in modules:
        start, end = cursor, cursor + len(mod.data)
        tail.append((start, mod.data))
        pending.append((start, end, os.fsencode(mod.cmdline)))
        cursor = (end + 0xFFF) & ~0xFFF
    mods_addr = cursor
    str_base = mods_addr + 16 * len(pending)
    strings = bytearray()

    def string(text: bytes) -> int:
        addr = str_base + len(strings)
        strings.extend(text.replace(b"\0", b"") + b"\0")
        return addr

    cmd_addr = string(cmdline)
    loader_addr = string(b"pyvmm")
    mods = [(s, e, string(c)) for s, e, c in pending]
    if str_base + len(strings) > min(low_end, 1 << 32):
        raise GuestImageError(f"{name}: the modules and the command line do not fit in RAM after "
                              "the kernel; give the guest more memory (--mem)")
    tail += [(mods_addr, b"".join(struct.pack("<IIII", s, e, c, 0) for s, e, c in mods)),
             (str_base, bytes(strings))]
    mmap_bytes = b"".join(struct.pack("<IQQI", 20, b, n, t) for b, n, t in mmap)
    info = struct.pack("<IIIIIII16xII", MBI_MEM | MBI_CMDLINE | MBI_MODS | MBI_MMAP | MBI_LOADER,
                       LOW_RAM_END // 1024, (low_end - 0x100000) // 1024, 0, cmd_addr,
                       len(mods), mods_addr, len(mmap_bytes), MMAP_ADDR)
    info += bytes(INFO_SIZE - len(info))
    info = info[:64] + struct.pack("<I", loader_addr) + info[68:]  # boot_loader_name
    head: list[tuple[int, bytes | memoryview]] = [(MMAP_ADDR, mmap_bytes), (INFO_ADDR, info),
                                                  (INFO_ADDR + GDT_OFFSET, gdt_bytes())]
    segments: list[tuple[int, bytes | memoryview]] = [(s.paddr, s.data) for s in image.segments]
    return MultibootPlan(INFO_ADDR, head + segments + tail, mmap, [(s, e) for s, e, _ in mods])
