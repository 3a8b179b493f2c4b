"""Seeded fuzz of the loaders, in-process: thousands of mutated ELF64 guests and multiboot
kernels must each load or be refused with GuestImageError/ConfigError, quickly.  Before
issue #8 such images hung the loader (PN_XNUM with a zero entry size), or escaped as
OverflowError and AttributeError (internal errors, status 125)."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest
from fuzz import mutate

from pyvmm.errors import ConfigError, GuestImageError
from pyvmm.loader import parse_image

N = 2500
RAM = [(0, 64 << 20)]


@pytest.mark.parametrize("name, seed", [("hello.elf", 8), ("hello.flat", 9), ("mbtest.flat", 10)])
def test_mutated_images_load_or_are_refused(guests, name, seed):
    data = (guests / name).read_bytes()
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    for i in range(N):
        bad = mutate(data, rng)
        t0 = time.perf_counter()
        try:
            image = parse_image(bad, f"{name}#{i}")
            image.plan(RAM, cmdline=b"x", ncpus=1)
            image.symbols.lookup(image.entry)  # the symbol table, decoded from what is left
            outcomes["ok"] += 1
        except (GuestImageError, ConfigError):
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a loader bug: name the image that did it
            pytest.fail(f"{name} mutation {i} (seed {seed}): {type(e).__name__}: {e}")
        slowest = max(slowest, time.perf_counter() - t0)
    assert outcomes["refused"] > N // 10 and sum(outcomes.values()) == N
    assert slowest < 1.0, f"one image took {slowest:.2f} s to load or refuse"


def _cuts(data: bytes) -> list[int]:
    """Every length through the headers and the multiboot search area (8 KiB), the start
    and end of every segment and section +-1, and a stride through the rest (every length
    of a 100 KiB image is minutes of copying for little more)."""
    import io

    from elftools.elf.elffile import ELFFile

    cuts = set(range(0, min(len(data), 8192 + 64) + 1)) | set(range(0, len(data) + 1, 97))
    elf = ELFFile(io.BytesIO(data))
    edges = [e for s in elf.iter_segments() for e in (s["p_offset"], s["p_offset"] + s["p_filesz"])]
    edges += [e for s in elf.iter_sections() for e in (s["sh_offset"], s["sh_offset"] + s["sh_size"])]
    cuts |= {e + d for e in edges for d in (-1, 0, 1) if 0 <= e + d <= len(data)}
    return sorted(cuts | {len(data)})


@pytest.mark.parametrize("name", ["hello.elf", "hello.flat", "mbtest.flat"])
def test_every_truncation_is_loaded_or_refused(guests, name):
    """Prefixes of a real image, from 0 bytes up: a 5-byte ``\\x7fELF\\x02`` was an
    IndexError (status 125) before; a truncated image must be a GuestImageError, one line."""
    data = (guests / name).read_bytes()
    for n in _cuts(data):
        try:
            image = parse_image(data[:n], f"{name}[:{n}]")
            image.plan(RAM, cmdline=b"x", ncpus=1)
        except (GuestImageError, ConfigError) as e:
            assert "\n" not in str(e) and str(e)
        except Exception as e:
            pytest.fail(f"{name} truncated to {n} bytes: {type(e).__name__}: {e}")


def test_truncated_elf_identification_is_refused():
    with pytest.raises(GuestImageError, match="truncated ELF identification"):
        parse_image(b"\x7fELF\x02", "t.elf")


@pytest.mark.parametrize("name, seed", [("hello.elf", 11), ("mbtest.flat", 12)])
def test_mutated_big_images_read_in_parts_as_whole(guests, tmp_path, name, seed):
    """A big ELF file is read in parts (pyvmm.loader.sparse): whatever its headers say,
    the loaders must judge it as they judge the whole file, never accept it for what was
    left unread."""
    from pyvmm.loader.sparse import read_image

    data = (guests / name).read_bytes() + b"\x55" * (1 << 20)
    rng = random.Random(seed)
    path = tmp_path / name

    def outcome(blob):
        try:
            img = parse_image(blob, name)
            return ("ok", img.entry, [(s.paddr, s.memsz, bytes(s.data)) for s in img.segments])
        except (GuestImageError, ConfigError) as e:
            return ("refused", str(e))

    sparse = 0
    for i in range(300):
        bad = mutate(data, rng)
        path.write_bytes(bad)
        try:
            parts = read_image(path, 64 << 20)
        except GuestImageError:
            continue
        sparse += not isinstance(parts, bytes)
        assert outcome(parts) == outcome(bad), f"{name} mutation {i} (seed {seed})"
    assert sparse > 100  # most were read in parts
