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
