"""Which parts of an ELF guest image the loaders read, so that the rest is never read.

A guest file may be far bigger than what it loads: debug information, often most of the
file, is only for debuggers.  :func:`elf_ranges` names the parts the loaders and the
symbol lookup use: the ELF header, the program and section header tables, every program
header's bytes (segments, notes, an interpreter's name) and the symbol and string tables.
The parser (``elf.py``) checks the file all the same, against its full size; a part it
does not use reads as zeros.

Anything of a shape this does not expect (an entry size other than the class's, extended
numbering, a table too big or outside the file) gives None: the file is read whole and
the parser judges it, so a file is never accepted because of what was left unread.
"""

from __future__ import annotations

import errno
import mmap
import os

from pyvmm.errors import GuestImageError
from pyvmm.loader.elf import (
    _EHDR,
    _PHDR,
    _SHDR,
    EI_NIDENT,
    ELFCLASS64,
    MAGIC,
    PN_XNUM,
    SHT_STRTAB,
    SHT_SYMTAB,
)
from pyvmm.loader.mbheader import FLAG_ADDRESSES, SEARCH, find_header
from pyvmm.loader.source import ImageBytes, no_memory, open_checked, read_file, shown

#: read first: the ELF header, usually the program headers, and the multiboot search area
HEAD = 64 << 10
#: files smaller than this are read whole (one read costs less than several)
WHOLE_BELOW = 1 << 20
#: a header table bigger than this is not the shape of a guest: read the file whole
MAX_TABLE = 1 << 20


def elf_ranges(fd: int, head: bytes, size: int) -> list[tuple[int, int]] | None:
    """``(start, end)`` file ranges the loaders read, ``head`` being the file's first
    bytes and ``size`` its size; None when the file is to be read whole (not an ELF file,
    a multiboot kernel, an unexpected shape)."""
    if head[:4] != MAGIC or len(head) < EI_NIDENT or head[4] not in _EHDR:
        return None
    mb = find_header(head[:SEARCH + 12])
    if mb is not None and mb.flags & FLAG_ADDRESSES:
        return None  # this multiboot header may name any part of the file to load
    cls = head[4]
    eh, ph, sh = _EHDR[cls], _PHDR[cls], _SHDR[cls]
    if len(head) < eh.size:
        return None
    (_ident, _type, _machine, _ver, _entry, phoff, shoff, _flags, _ehsize, phentsize, phnum,
     shentsize, shnum, _shstrndx) = eh.unpack_from(head)
    if phnum == PN_XNUM or (shoff and shnum == 0) or phentsize != ph.size \
            or (shnum and shentsize != sh.size):
        return None
    ranges = [(0, min(size, HEAD))]
    phdrs = _table(fd, phoff, phnum, ph.size, size)
    shdrs = _table(fd, shoff, shnum, sh.size, size)
    if phdrs is None or shdrs is None:
        return None
    ranges += [(phoff, phoff + len(phdrs)), (shoff, shoff + len(shdrs))]
    for i in range(phnum):
        raw = ph.unpack_from(phdrs, i * ph.size)
        off, filesz = (raw[2], raw[5]) if cls == ELFCLASS64 else (raw[1], raw[4])
        ranges.append((off, off + filesz))
    for i in range(shnum):
        _name, stype, _fl, _addr, offset, sz, *_rest = sh.unpack_from(shdrs, i * sh.size)
        if stype in (SHT_SYMTAB, SHT_STRTAB):
            ranges.append((offset, offset + sz))
    return [(a, min(b, size)) for a, b in ranges if a < min(b, size)]


def _table(fd: int, off: int, count: int, entsize: int, size: int) -> bytes | None:
    """A header table's bytes; None when it is too big or not wholly in the file."""
    n = count * entsize
    if n == 0:
        return b""
    if n > MAX_TABLE or off <= 0 or off + n > size:
        return None
    data = os.pread(fd, n, off)
    return data if len(data) == n else None


def read_image(path: str | os.PathLike[str], limit: int) -> ImageBytes:
    """The guest image at ``path`` as the loaders need it.  A big ELF file is not read
    whole: its size in anonymous memory (pages never touched cost nothing), filled with
    only the parts the loaders read (:func:`elf_ranges`): headers,
    segments, symbol and string tables, never its debug information.  Anything else (a
    small file, a multiboot kernel, an ELF file of an unusual shape) is read whole."""
    name = shown(path)
    fd, size = open_checked(path, limit, "guest image", GuestImageError)
    try:
        ranges = None
        if size >= WHOLE_BELOW:
            ranges = elf_ranges(fd, os.pread(fd, HEAD, 0), size)
        if ranges is None:
            os.close(fd)
            fd = -1
            return read_file(path, limit)
        buf = mmap.mmap(-1, size)
        for start, end in ranges:
            _fill(fd, buf, start, end)
        return buf
    except MemoryError:
        raise no_memory(name, size, "guest image", GuestImageError) from None
    except OSError as e:
        if e.errno == errno.ENOMEM:
            raise no_memory(name, size, "guest image", GuestImageError) from None
        raise GuestImageError(f"{name}: {e.strerror}") from None
    finally:
        if fd >= 0:
            os.close(fd)


def _fill(fd: int, buf: mmap.mmap, start: int, end: int) -> None:
    """``buf[start:end]`` from the file; what the file no longer has stays zero."""
    with memoryview(buf) as view:
        while start < end:
            n = os.preadv(fd, [view[start:end]], start)
            if n <= 0:
                return
            start += n
