"""The ELF *parser*: ELF files as guest images, headers, loadable segments and the symbol
table, checked.  (What pyvmm does with an ELF64 guest, its boot convention, is the
*loader* :mod:`pyvmm.loader.boot`; a multiboot kernel's is :mod:`pyvmm.loader.multiboot`.)

The file is hostile input.  Every count, offset and size in it is checked against the
file's length *before* anything is iterated (an ``e_phnum`` of PN_XNUM with a zero
``e_phentsize`` must not become 2^32 loop turns), so parsing is bounded by the file's size.
The headers are read here with ``struct``; the symbol table, which only crash reports and
debuggers need, is decoded on first use with pyelftools, from sections already checked.

Used by both loaders: ELF64 x86-64 guests (``pyvmm.loader.boot``) and ELF32 multiboot
kernels (``pyvmm.loader.multiboot``).
"""

from __future__ import annotations

import itertools
import struct

from pyvmm.errors import GuestImageError
from pyvmm.loader.source import ImageBytes
from pyvmm.loader.symbols import Symbols
from pyvmm.record import FrozenRecord, Record

MAGIC = b"\x7fELF"
#: e_ident's size: class, data encoding and version lie in it, before any header field
EI_NIDENT = 16
ELFCLASS32, ELFCLASS64 = 1, 2
ELFDATA2LSB = 1
ET_EXEC = 2
EM_386, EM_X86_64 = 3, 62
PT_LOAD = 1
PF_X = 1
SHT_SYMTAB, SHT_STRTAB = 2, 3
PN_XNUM = 0xFFFF
SHN_XINDEX = 0xFFFF
#: the physical address space pyvmm can give a guest (x86-64: 52 bits)
PHYS_LIMIT = 1 << 52

# per class: (ELF header, program header, section header, symbol) layouts
_EHDR = {ELFCLASS32: struct.Struct("<16sHHIIIIIHHHHHH"), ELFCLASS64: struct.Struct("<16sHHIQQQIHHHHHH")}
_PHDR = {ELFCLASS32: struct.Struct("<IIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQQQ")}
_SHDR = {ELFCLASS32: struct.Struct("<IIIIIIIIII"), ELFCLASS64: struct.Struct("<IIQQQQIIQQ")}
SYM_SIZE = {ELFCLASS32: 16, ELFCLASS64: 24}
MACHINES = {EM_386: "EM_386", EM_X86_64: "EM_X86_64", 0: "EM_NONE", 40: "EM_ARM", 183: "EM_AARCH64",
            243: "EM_RISCV"}


class LoadSegment(FrozenRecord):
    """A PT_LOAD segment: ``data`` (``p_filesz`` bytes) at ``paddr``, zero-filled to
    ``memsz``."""

    _fields = ("index", "paddr", "vaddr", "memsz", "data", "flags")
    index: int
    paddr: int
    vaddr: int
    memsz: int
    data: bytes | memoryview
    flags: int

    def __init__(self, index: int, paddr: int, vaddr: int, memsz: int,
                 data: bytes | memoryview, flags: int) -> None:
        self._set(index=index, paddr=paddr, vaddr=vaddr, memsz=memsz, data=data, flags=flags)

    @property
    def end(self) -> int:
        return self.paddr + self.memsz

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


class SectionHeader(FrozenRecord):
    _fields = ("index", "name", "type", "offset", "size", "link", "info", "entsize")
    index: int
    name: int
    type: int
    offset: int
    size: int
    link: int
    info: int
    entsize: int

    def __init__(self, index: int, name: int, type: int, offset: int, size: int, link: int,
                 info: int, entsize: int) -> None:
        self._set(index=index, name=name, type=type, offset=offset, size=size, link=link,
                  info=info, entsize=entsize)


class ElfFile(Record):
    """A checked ELF file: its class, header fields, segments and symbol table."""

    _fields = ("name", "data", "elfclass", "machine", "type", "entry", "segments", "sections",
               "others")

    def __init__(self, name: str, data: ImageBytes, elfclass: int, machine: int, type: int,
                 entry: int, segments: list[LoadSegment],
                 sections: list[SectionHeader] | None = None,
                 others: list[tuple[int, int, int]] | None = None) -> None:
        self.name = name
        self.data = data
        self.elfclass = elfclass
        self.machine = machine
        self.type = type
        self.entry = entry
        self.segments = segments
        self.sections: list[SectionHeader] = [] if sections is None else sections
        #: ``(p_type, p_offset, p_filesz)`` of the program headers that are not PT_LOAD
        #: (notes, an interpreter), unchecked: whoever reads one bounds it by the file
        self.others: list[tuple[int, int, int]] = [] if others is None else others

    @property
    def bits(self) -> int:
        return 64 if self.elfclass == ELFCLASS64 else 32

    def symbols(self) -> Symbols:
        """The function and object symbols (decoded on first use), looked up only inside
        the executable segments, so a wild RIP is never named after the nearest label."""
        ranges = [(s.vaddr, s.vaddr + s.memsz) for s in self.segments if s.executable]
        symtab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            return Symbols([], ranges)
        return Symbols.lazy(lambda: _decode_symbols(self.data, symtab.index), ranges)


def _bad(name: str, what: str) -> GuestImageError:
    return GuestImageError(f"{name}: malformed ELF: {what}")


def _table(data: ImageBytes, name: str, what: str, off: int, count: int, entsize: int,
           want: int) -> None:
    """A header table must have entries of the size this class uses and lie in the file."""
    if count == 0:
        return
    if entsize != want:
        raise _bad(name, f"{what} entry size {entsize}, expected {want}")
    if off <= 0 or off + count * entsize > len(data):
        raise _bad(name, f"{what} table ({count} x {entsize} bytes at {off:#x}) lies outside "
                   f"the {len(data)}-byte file")


def parse(data: ImageBytes, name: str) -> ElfFile:
    """Check and read an ELF file's headers.  Raises :class:`GuestImageError`."""
    if data[:4] != MAGIC:
        raise GuestImageError(f"{name}: not an ELF file (bad magic)")
    if len(data) < EI_NIDENT:
        raise _bad(name, f"truncated ELF identification ({len(data)} of {EI_NIDENT} bytes)")
    cls = data[4]
    if cls not in _EHDR:
        raise _bad(name, f"EI_CLASS {cls}")
    if data[5] != ELFDATA2LSB:
        raise GuestImageError(f"{name}: big-endian ELF; pyvmm runs x86 (little-endian) guests")
    eh = _EHDR[cls]
    if len(data) < eh.size:
        raise _bad(name, "truncated ELF header")
    (_ident, etype, machine, _ver, entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, shstrndx) = eh.unpack_from(data)
    sh = _SHDR[cls]
    # extended numbering: the real counts live in section 0 (ELF gABI, "Special sections")
    if shoff and (shnum == 0 or phnum == PN_XNUM or shstrndx == SHN_XINDEX):
        _table(data, name, "section header", shoff, 1, shentsize, sh.size)
        s0 = sh.unpack_from(data, shoff)
        shnum = shnum or s0[5]
        if phnum == PN_XNUM:
            phnum = s0[7]
    elif phnum == PN_XNUM:
        raise _bad(name, "e_phnum is PN_XNUM but there is no section 0 to hold the count")
    _table(data, name, "program header", phoff, phnum, phentsize, _PHDR[cls].size)
    _table(data, name, "section header", shoff, shnum, shentsize, sh.size)
    sections = [SectionHeader(i, *_pick(sh.unpack_from(data, shoff + i * shentsize)))
                for i in range(shnum)]
    for s in sections:
        if s.type in (SHT_SYMTAB, SHT_STRTAB) and s.offset + s.size > len(data):
            raise _bad(name, f"section {s.index} ({s.size} bytes at {s.offset:#x}) lies "
                       "outside the file")
        if s.type == SHT_SYMTAB and (s.entsize != SYM_SIZE[cls] or s.link >= shnum
                                     or sections[s.link].type != SHT_STRTAB):
            raise _bad(name, f"symbol table section {s.index} has entry size {s.entsize} or "
                       f"string table link {s.link} that is not valid")
    segments, others = _load_segments(data, cls, phoff, phnum, name)
    return ElfFile(name, data, cls, machine, etype, entry, segments, sections, others)


def _pick(sh: tuple[int, ...]) -> tuple[int, int, int, int, int, int, int]:
    """(name, type, offset, size, link, info, entsize) of a section header tuple."""
    name, stype, _flags, _addr, offset, size, link, info, _align, entsize = sh
    return name, stype, offset, size, link, info, entsize


def _load_segments(data: ImageBytes, cls: int, phoff: int, phnum: int,
                   name: str) -> tuple[list[LoadSegment], list[tuple[int, int, int]]]:
    """The PT_LOAD segments, checked against the file and each other, sorted by paddr; and
    ``(type, offset, filesz)`` of the other program headers."""
    ph = _PHDR[cls]
    view = memoryview(data)
    out: list[LoadSegment] = []
    others: list[tuple[int, int, int]] = []
    for i in range(phnum):
        raw = ph.unpack_from(data, phoff + i * ph.size)
        if cls == ELFCLASS64:
            ptype, flags, off, vaddr, paddr, filesz, memsz, _align = raw
        else:
            ptype, off, vaddr, paddr, filesz, memsz, flags, _align = raw
        if ptype != PT_LOAD:
            others.append((ptype, off, filesz))
            continue
        if memsz == 0:
            continue
        if filesz > memsz:
            raise _bad(name, f"segment {i} has p_filesz > p_memsz")
        if off + filesz > len(data):
            raise GuestImageError(f"{name}: segment {i} extends past the end of the file "
                                  "(truncated image?)")
        if paddr + memsz > PHYS_LIMIT:
            raise GuestImageError(f"{name}: segment {i} lies beyond the physical address space")
        if vaddr + memsz > 1 << (64 if cls == ELFCLASS64 else 32):
            raise _bad(name, f"segment {i} wraps around the virtual address space")
        out.append(LoadSegment(i, paddr, vaddr, memsz, view[off:off + filesz], flags))
    if not out:
        raise GuestImageError(f"{name}: no loadable (PT_LOAD) segments")
    out.sort(key=lambda s: s.paddr)
    for a, b in itertools.pairwise(out):
        if b.paddr < a.end:
            raise GuestImageError(f"{name}: segments {a.index} and {b.index} overlap in "
                                  f"physical memory at {b.paddr:#x}")
    return out, others


def _decode_symbols(data: ImageBytes, symtab: int) -> list[tuple[int, int, str]]:
    """``(address, size, name)`` of the function, object and label symbols of section
    ``symtab`` (already checked by :func:`parse`: in the file, right entry size, linked to a
    string table)."""
    import io
    import mmap

    from elftools.elf.elffile import ELFFile
    from elftools.elf.sections import SymbolTableSection

    # a mapping is a file already (read, seek, tell): no copy of a big image's bytes
    stream = data if isinstance(data, mmap.mmap) else io.BytesIO(data)
    section = ELFFile(stream).get_section(symtab)  # type: ignore[arg-type]  # read/seek/tell
    if not isinstance(section, SymbolTableSection):
        return []
    out = []
    for s in section.iter_symbols():
        if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                and s["st_shndx"] not in ("SHN_UNDEF", "SHN_ABS"):
            out.append((int(s["st_value"]), int(s["st_size"]), str(s.name)))
    return out
