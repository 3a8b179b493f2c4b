"""Seeded mutations of guest images, for the loader fuzz tests (``test_fuzz_loaders.py``).

The mutations aim where loaders break: header fields (counts, offsets, entry sizes) set to
boundary values, random bytes in the first pages, truncations.  The same seed gives the
same images, so a failure is reproducible from the test id.
"""

from __future__ import annotations

import random
import struct

INTERESTING = (0, 1, 2, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               1 << 32, 1 << 52, 1 << 63, (1 << 64) - 1, 56, 64, 4096, 0x100000)
# (offset, format) of the ELF64 header fields worth breaking
ELF64_FIELDS = ((4, "<B"), (5, "<B"), (16, "<H"), (18, "<H"), (24, "<Q"), (32, "<Q"), (40, "<Q"),
                (54, "<H"), (56, "<H"), (58, "<H"), (60, "<H"), (62, "<H"))
ELF32_FIELDS = ((4, "<B"), (16, "<H"), (18, "<H"), (24, "<I"), (28, "<I"), (32, "<I"),
                (42, "<H"), (44, "<H"), (46, "<H"), (48, "<H"), (50, "<H"))


def _put(b: bytearray, off: int, fmt: str, value: int) -> None:
    size = struct.calcsize(fmt)
    if off + size <= len(b):
        struct.pack_into(fmt, b, off, value & ((1 << (8 * size)) - 1))


def _tables(data: bytes) -> list[tuple[int, str]]:
    """Fields of the program and section headers (64- or 32-bit), where they are."""
    out: list[tuple[int, str]] = []
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return out
    if data[4] == 2:
        phoff, shoff = struct.unpack_from("<Q", data, 32)[0], struct.unpack_from("<Q", data, 40)[0]
        phnum, shnum = struct.unpack_from("<H", data, 56)[0], struct.unpack_from("<H", data, 60)[0]
        out += [(phoff + i * 56 + f, "<Q") for i in range(min(phnum, 8)) for f in (8, 16, 24, 32, 40)]
        out += [(shoff + i * 64 + f, fmt) for i in range(min(shnum, 16))
                for f, fmt in ((4, "<I"), (24, "<Q"), (32, "<Q"), (40, "<I"), (56, "<Q"))]
    else:
        phoff, shoff = struct.unpack_from("<I", data, 28)[0], struct.unpack_from("<I", data, 32)[0]
        phnum, shnum = struct.unpack_from("<H", data, 44)[0], struct.unpack_from("<H", data, 48)[0]
        out += [(phoff + i * 32 + f, "<I") for i in range(min(phnum, 8)) for f in (4, 8, 12, 16, 20)]
        out += [(shoff + i * 40 + f, "<I") for i in range(min(shnum, 16)) for f in (4, 16, 20, 24, 36)]
    return out


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One mutated copy of ``data``: 1-4 changes of the kinds above."""
    b = bytearray(data)
    fields = ELF64_FIELDS if data[4:5] == b"\x02" else ELF32_FIELDS
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.35:
            off, fmt = rng.choice(fields)
            _put(b, off, fmt, rng.choice(INTERESTING))
        elif kind < 0.65 and _tables(bytes(b)):
            off, fmt = rng.choice(_tables(bytes(b)))
            _put(b, off, fmt, rng.choice(INTERESTING) if rng.random() < 0.7 else rng.getrandbits(32))
        elif kind < 0.85:
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(min(len(b), 8192))] = rng.getrandbits(8)
        else:
            del b[rng.randrange(1, len(b)):]
    return bytes(b)
