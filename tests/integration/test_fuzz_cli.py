"""A sample of the loader fuzz through the command line, as users meet it: every mutated
image ends with a documented status (never 125, the internal-error status), one line of
error when refused, no traceback, and within its timeout."""

from __future__ import annotations

import random
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from cli import pyvmm
from fuzz import mutate

from pyvmm.errors import ExitStatus

SAMPLE = 24
GUEST_STATUSES = set(range(0, 119))  # whatever a garbled guest writes to debug-exit
DOCUMENTED = GUEST_STATUSES | {ExitStatus.GUEST_IMAGE, ExitStatus.GUEST_IO, ExitStatus.GUEST_CRASH,
                               ExitStatus.TIMEOUT, ExitStatus.GUEST_ASSERT, 255}


@pytest.mark.kvm
@pytest.mark.parametrize("name, seed", [("hello.elf", 21), ("mbtest.flat", 22)])
def test_mutated_images_through_the_cli(guests, tmp_path, name, seed):
    rng = random.Random(seed)
    data = (guests / name).read_bytes()
    files = []
    for i in range(SAMPLE):
        f = tmp_path / f"m{i}-{name}"
        f.write_bytes(mutate(data, rng))
        files.append(f)

    def one(f):
        return f, pyvmm("run", str(f), "--timeout", "1", timeout=30)

    statuses: Counter[int] = Counter()
    with ThreadPoolExecutor(2) as pool:
        for f, p in pool.map(one, files):
            statuses[p.returncode] += 1
            assert p.returncode in DOCUMENTED, (f.name, p.returncode, p.stderr)
            assert "Traceback" not in p.stderr, (f.name, p.stderr)
            if p.returncode == ExitStatus.GUEST_IMAGE:
                assert len(p.stderr.strip().splitlines()) == 1, (f.name, p.stderr)
    assert statuses[ExitStatus.GUEST_IMAGE] > 0
