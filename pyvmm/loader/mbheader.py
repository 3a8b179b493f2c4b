"""The multiboot v1 header: where it is and what it says (spec 0.6.96, section 3.1.1).

Apart from the loader (``multiboot.py``) so that telling formats apart (``detect``) does
not load the whole multiboot loader for every ELF64 guest.
"""

from __future__ import annotations

import struct

from pyvmm.loader.source import ImageBytes
from pyvmm.record import FrozenRecord

HEADER_MAGIC = 0x1BADB002
#: the header must lie, 4-byte aligned, in the file's first 8 KiB
SEARCH = 8192
#: flags bit 16: the header's own addresses say what to load where
FLAG_ADDRESSES = 1 << 16

class MultibootHeader(FrozenRecord):
    _fields = ("offset", "flags", "header_addr", "load_addr", "load_end_addr", "bss_end_addr",
               "entry_addr")
    offset: int
    flags: int
    header_addr: int
    load_addr: int
    load_end_addr: int
    bss_end_addr: int
    entry_addr: int

    def __init__(self, offset: int, flags: int, header_addr: int = 0, load_addr: int = 0,
                 load_end_addr: int = 0, bss_end_addr: int = 0, entry_addr: int = 0) -> None:
        self._set(offset=offset, flags=flags, header_addr=header_addr, load_addr=load_addr,
                  load_end_addr=load_end_addr, bss_end_addr=bss_end_addr,
                  entry_addr=entry_addr)

def find_header(data: ImageBytes) -> MultibootHeader | None:
    """The multiboot header in the first 8 KiB, or None."""
    for off in range(0, min(len(data), SEARCH) - 11, 4):
        magic, flags, csum = struct.unpack_from("<III", data, off)
        if magic == HEADER_MAGIC and (magic + flags + csum) & 0xFFFFFFFF == 0:
            if flags & FLAG_ADDRESSES:
                if off + 32 > len(data):
                    return None
                return MultibootHeader(off, flags, *struct.unpack_from("<5I", data, off + 12))
            return MultibootHeader(off, flags)
    return None
