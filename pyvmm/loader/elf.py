"""ELF64 x86-64 guest images (pyelftools): validate, collect PT_LOAD segments and symbols.

Everything here works on the file's bytes, before any VM exists, so a bad image is
refused with a :class:`GuestImageError` that says what is wrong and what to do, and
nothing has to be torn down.
"""

from __future__ import annotations

import bisect
import io
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile

PF_X = 1


class GuestImageError(ValueError):
    """The guest file cannot be loaded (not ELF, wrong kind, does not fit in RAM, ...)."""


@dataclass(frozen=True)
class LoadSegment:
    """A PT_LOAD segment: ``filesz`` bytes of ``data`` at ``paddr``, zero-filled to ``memsz``."""

    index: int
    paddr: int
    vaddr: int
    memsz: int
    data: bytes
    flags: int

    @property
    def end(self) -> int:
        return self.paddr + self.memsz

    @property
    def executable(self) -> bool:
        return bool(self.flags & PF_X)


@dataclass
class Symbols:
    """Function and object symbols, for naming the code at a guest RIP."""

    addrs: list[int] = field(default_factory=list)
    entries: list[tuple[int, int, str]] = field(default_factory=list)  # (addr, size, name)

    @classmethod
    def from_list(cls, syms: list[tuple[int, int, str]]) -> Symbols:
        syms = sorted(set(syms))
        return cls([s[0] for s in syms], syms)

    def lookup(self, addr: int) -> str | None:
        """``"name+0x1f"`` for the symbol covering ``addr`` (or the nearest one below a
        sized-0 label), None when no symbol is close."""
        i = bisect.bisect_right(self.addrs, addr) - 1
        while i >= 0:
            start, size, name = self.entries[i]
            if size == 0 or addr < start + size:
                off = addr - start
                return name if off == 0 else f"{name}+{off:#x}"
            i -= 1
            if start + size <= addr and size:
                return None
        return None

    def address_of(self, name: str) -> int | None:
        for addr, _size, n in self.entries:
            if n == name:
                return addr
        return None


@dataclass
class ElfImage:
    path: str
    entry: int
    segments: list[LoadSegment]
    symbols: Symbols

    def entry_segment(self) -> LoadSegment | None:
        for s in self.segments:
            if s.vaddr <= self.entry < s.vaddr + s.memsz:
                return s
        return None


def load_elf64(path: str | Path) -> ElfImage:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise GuestImageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise GuestImageError(f"{p}: is a directory, not a guest image") from None
    except PermissionError:
        raise GuestImageError(f"{p}: permission denied") from None
    return parse_elf64(data, str(p))


def parse_elf64(data: bytes, name: str = "<guest>") -> ElfImage:
    """Parse and validate an ELF64 x86-64 executable.  Raises :class:`GuestImageError`."""
    if data[:4] != b"\x7fELF":
        raise GuestImageError(f"{name}: not an ELF file (bad magic)")
    try:
        elf = ELFFile(io.BytesIO(data))
        cls = elf.header["e_ident"]["EI_CLASS"]
        if cls != "ELFCLASS64":
            raise GuestImageError(f"{name}: {cls} image; pyvmm runs ELF64 (ELFCLASS64) guests")
        if elf.header["e_machine"] != "EM_X86_64":
            raise GuestImageError(
                f"{name}: machine {elf.header['e_machine']}, pyvmm runs x86-64 (EM_X86_64) guests")
        if elf.header["e_type"] != "ET_EXEC":
            raise GuestImageError(
                f"{name}: type {elf.header['e_type']}; link the guest as a static executable "
                "(-static -no-pie)")
        segments = load_segments(elf, data, name)
        symbols = symbols_of(elf)
        entry = elf.header["e_entry"]
    except ELFError as e:
        raise GuestImageError(f"{name}: malformed ELF: {e}") from None
    except (ValueError, KeyError, IndexError) as e:
        if isinstance(e, GuestImageError):
            raise
        raise GuestImageError(f"{name}: malformed ELF: {e}") from None
    image = ElfImage(name, entry, segments, symbols)
    seg = image.entry_segment()
    if seg is None or not seg.executable:
        raise GuestImageError(
            f"{name}: entry point {entry:#x} is not inside an executable loaded segment")
    return image


def load_segments(elf: ELFFile, data: bytes, name: str) -> list[LoadSegment]:
    """The PT_LOAD segments, checked against the file and each other, sorted by paddr."""
    out: list[LoadSegment] = []
    for i in range(elf.num_segments()):
        seg = elf.get_segment(i)
        ph = seg.header
        if ph["p_type"] != "PT_LOAD" or ph["p_memsz"] == 0:
            continue
        off, filesz, memsz = ph["p_offset"], ph["p_filesz"], ph["p_memsz"]
        if filesz > memsz:
            raise GuestImageError(f"{name}: segment {i} has p_filesz > p_memsz")
        if off + filesz > len(data):
            raise GuestImageError(f"{name}: segment {i} extends past the end of the file "
                                  "(truncated image?)")
        if ph["p_paddr"] + memsz > 1 << 52:
            raise GuestImageError(f"{name}: segment {i} lies beyond the physical address space")
        out.append(LoadSegment(i, ph["p_paddr"], ph["p_vaddr"], memsz,
                               data[off:off + filesz], ph["p_flags"]))
    if not out:
        raise GuestImageError(f"{name}: no loadable (PT_LOAD) segments")
    out.sort(key=lambda s: s.paddr)
    for a, b in itertools.pairwise(out):
        if b.paddr < a.end:
            raise GuestImageError(f"{name}: segments {a.index} and {b.index} overlap in "
                                  f"physical memory at {b.paddr:#x}")
    return out


def symbols_of(elf: ELFFile) -> Symbols:
    tab = elf.get_section_by_name(".symtab")
    syms: list[tuple[int, int, str]] = []
    if tab is not None:
        for s in tab.iter_symbols():
            if s.name and s["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                    and s["st_shndx"] != "SHN_UNDEF" and s["st_shndx"] != "SHN_ABS":
                syms.append((s["st_value"], s["st_size"], s.name))
    return Symbols.from_list(syms)
