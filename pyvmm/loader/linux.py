"""Telling a Linux user-space program from a guest kernel.

``gcc -static hello.c`` makes an ELF64 x86-64 executable that looks, to the ELF64 loader,
like a guest: it loads, and then spins at CPL0 for ever, waiting for a kernel that is not
there.  Such a program carries the marks of the Linux ABI, which no guest kernel does: an
interpreter (PT_INTERP) or a dynamic section, the GNU ABI note (``NT_GNU_ABI_TAG``, "OS:
Linux"), the GNU/Linux OS ABI in ``e_ident``, or the C library's start-up symbols.  A Linux
*kernel* has none of them (its notes are "Linux" and "Xen" ones, and the GNU build id).
"""

from __future__ import annotations

import struct

from pyvmm.loader.elf import SHT_STRTAB, ElfFile
from pyvmm.loader.source import ImageBytes

PT_DYNAMIC, PT_INTERP, PT_NOTE = 2, 3, 4
ELFOSABI_GNU = 3
EI_OSABI = 7
NT_GNU_ABI_TAG = 1
#: start-up code of glibc and musl, which only a C library's user-space program links
LIBC_SYMBOLS = (b"__libc_start_main", b"__libc_start_call_main", b"_dl_relocate_static_pie")
#: glibc's names (symbols, and sections that survive ``strip``) all start so
LIBC_PREFIX = b"__libc_"
#: notes scanned per PT_NOTE segment at most (each is at least 12 bytes anyway)
MAX_NOTES = 64


def linux_program(elf: ElfFile) -> str | None:
    """Why ``elf`` is a Linux user-space program (a few words), or None when it is not
    one.  Every offset comes from the file and is bounded by it."""
    data = elf.data
    for ptype, off, size in elf.others:
        if ptype == PT_INTERP:
            interp = data[off:off + min(size, 256)].split(b"\0")[0]
            return (f"it asks for the interpreter {interp.decode('utf-8', 'backslashreplace')}"
                    if interp else "it has an interpreter (PT_INTERP)")
        if ptype == PT_DYNAMIC:
            return "it has a dynamic section, PT_DYNAMIC"
    if any(ptype == PT_NOTE and _has_abi_tag(data, off, size) for ptype, off, size in elf.others):
        return "its GNU ABI note names the Linux ABI"
    if len(data) > EI_OSABI and data[EI_OSABI] == ELFOSABI_GNU:
        return "its OS ABI is GNU/Linux"
    tables = [data[s.offset:s.offset + s.size] for s in elf.sections if s.type == SHT_STRTAB]
    for strings in tables:
        for sym in LIBC_SYMBOLS:
            if b"\0" + sym + b"\0" in strings:
                return f"it links the C library's {sym.decode()}"
    for strings in tables:  # stripped: glibc's own sections (__libc_atexit, ...) remain
        at = strings.find(b"\0" + LIBC_PREFIX)
        if at >= 0:
            name = strings[at + 1:at + 65].split(b"\0")[0].decode("ascii", "backslashreplace")
            return f"it carries the C library's {name}"
    return None


def _has_abi_tag(data: ImageBytes, off: int, size: int) -> bool:
    """Whether the notes at ``data[off:off+size]`` hold NT_GNU_ABI_TAG from "GNU"."""
    end = min(off + size, len(data))
    pos = off
    for _ in range(MAX_NOTES):
        if pos < 0 or pos + 12 > end:
            return False
        namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
        name_at = pos + 12
        if ntype == NT_GNU_ABI_TAG and namesz == 4 and data[name_at:name_at + 4] == b"GNU\0":
            return True
        pos = name_at + (namesz + 3 & ~3) + (descsz + 3 & ~3)
    return False
