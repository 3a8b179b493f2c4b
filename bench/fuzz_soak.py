#!/usr/bin/env python3
"""Robustness under a fuzzer (issue 21): FUZZ_SOAK iterations (default 100,000) of one
``pyvmm.fuzz.Target`` on guests/fuzzme.elf, inputs cycling through ok, crash (#PF at
CPL3), assertion and a guest that wrecks its own IDT and runtime; the process's RSS, open
fds and threads and the machine's memslots are printed every tenth of the way.  None may
grow after the first tenth (warm-up: caches, the first restore's copy of RAM)."""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path

import installed  # noqa: F401  # first: refuses the source tree

from pyvmm.fuzz import Target

GUEST = Path(__file__).resolve().parent.parent / "guests" / "build" / "fuzzme.elf"
N = int(os.environ.get("FUZZ_SOAK", "100000"))
INPUTS = (b"hello", b"CRASH", b"hello again", b"ABRT", b"SMASH", b"EXIT")


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    want = {b"hello": "ok", b"CRASH": "crash", b"hello again": "ok", b"ABRT": "assert",
            b"SMASH": "crash", b"EXIT": "ok"}
    rows = []
    with Target(GUEST) as t:
        t0 = time.monotonic()
        for i in range(N):
            data = INPUTS[i % len(INPUTS)]
            r = t.run(data)
            if r.status != want[data]:
                print(f"iteration {i}: {data!r} gave {r.status} ({r.reason})")
                return 1
            if (i + 1) % max(1, N // 10) == 0:
                rows.append((i + 1, rss_kib(), len(os.listdir("/proc/self/fd")),
                             threading.active_count(), len(os.listdir("/proc/self/task")),
                             len(t.machine.memory.regions)))
        rate = N / (time.monotonic() - t0)
    print(f"{N} iterations in one process, {rate:.0f} it/s")
    print(f"{'iteration':>10} {'RSS KiB':>9} {'fds':>5} {'py threads':>11} {'tasks':>6} {'memslots':>9}")
    for it, rss, fds, py, tasks, slots in rows:
        print(f"{it:>10} {rss:>9} {fds:>5} {py:>11} {tasks:>6} {slots:>9}")
    first, last = rows[0], rows[-1]
    grew = [name for name, a, b in zip(("RSS", "fds", "threads", "tasks", "memslots"),
                                       first[1:], last[1:], strict=True)
            if (b > a * 1.05 + 1024 if name == "RSS" else b > a)]
    print("no growth after the first tenth" if not grew else f"GREW: {', '.join(grew)}")
    return 1 if grew else 0


if __name__ == "__main__":
    sys.exit(main())
