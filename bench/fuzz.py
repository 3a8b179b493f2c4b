#!/usr/bin/env python3
"""Fuzzing guest code with AFL++ (issue 21), on examples/fuzz-parser (a TLV parser at CPL3
with a bug behind a two-byte mark):

1. exec/s under afl-fuzz (its fuzzer_stats) through ``pyvmm fuzz-target``, against the
   same parser built natively with afl-cc in persistent mode, and against pyvmm's own
   Python loop (``Target.run``, no AFL);
2. the cost of one iteration: restore, input write, run, coverage read (timed in the
   Python loop) and the AFL round trip (afl-fuzz's time per exec minus those);
3. time to the planted bug: afl-fuzz -D until its first crash (AFL_BENCH_UNTIL_CRASH), median
   of FUZZ_BENCH_RUNS runs (default 5) for each build, capped at FUZZ_BENCH_CAP seconds.

Targets from the issue: >= 2,000 exec/s per core under afl-fuzz with the target at CPL3,
time-to-bug within 10x of the native build.  One core each (afl-fuzz runs one at a time).
Needs afl-fuzz and afl-cc (Debian: apt-get install afl++); says so and exits 0 without.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import installed  # noqa: F401  # first: refuses the source tree

from pyvmm.fuzz import Target
from pyvmm.fuzz.target import write_input

HERE = Path(__file__).resolve().parent
EXAMPLE = HERE.parent / "examples" / "fuzz-parser"
BUILD = HERE / "build" / "fuzz"
PYVMM = Path(sys.executable).parent / "pyvmm"
RUNS = int(os.environ.get("FUZZ_BENCH_RUNS", "5"))
CAP = int(os.environ.get("FUZZ_BENCH_CAP", "300"))
RATE_SECONDS = int(os.environ.get("FUZZ_BENCH_RATE_SECONDS", "20"))
ENV = dict(os.environ, AFL_SKIP_BIN_CHECK="1", AFL_NO_UI="1", AFL_SKIP_CPUFREQ="1",
           AFL_NO_AFFINITY="1", AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES="1",
           AFL_FORKSRV_INIT_TMOUT="60000")


def build() -> tuple[Path, Path]:
    BUILD.mkdir(parents=True, exist_ok=True)
    guest, native = BUILD / "tlv.elf", BUILD / "tlv-native"
    subprocess.run([str(PYVMM), "guest", "build", "--coverage", "-o", str(guest),
                    str(EXAMPLE / "guest.c"), "--user-src", str(EXAMPLE / "harness.c"),
                    "--user-src", str(EXAMPLE / "tlv.c")], check=True)
    subprocess.run(["afl-cc", "-O2", "-o", str(native), str(EXAMPLE / "native.c"),
                    str(EXAMPLE / "tlv.c")], check=True, capture_output=True, env=ENV)
    return guest, native


def afl(target: list[str], seconds: int, until_crash: bool) -> tuple[float, dict[str, str]]:
    """One afl-fuzz run on the example's seeds: wall seconds and its fuzzer_stats.  Until
    the first crash, the deterministic stages are on (-D): the bug is then reached by the
    same steps in every run (arithmetic on a seed's blob bytes), and what the runs measure
    is the speed of getting there, not the luck of havoc."""
    with tempfile.TemporaryDirectory(prefix="pyvmm-fuzz-bench-") as tmp:
        out = Path(tmp) / "out"
        env = dict(ENV, AFL_BENCH_UNTIL_CRASH="1") if until_crash else ENV
        t0 = time.monotonic()
        det = ["-D"] if until_crash else []
        subprocess.run(["afl-fuzz", *det, "-V", str(seconds), "-i", str(EXAMPLE / "seeds"), "-o",
                        str(out), "--", *target], env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=seconds + 300)
        wall = time.monotonic() - t0
        lines = (out / "default" / "fuzzer_stats").read_text().splitlines()
    return wall, {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def python_loop(guest: Path, n: int = 2000) -> tuple[float, dict[str, float]]:
    """Iterations per second of Target.run, and the median us of each part."""
    seed = (EXAMPLE / "seeds" / "basic.tlv").read_bytes()
    parts: dict[str, list[int]] = {"restore": [], "input write": [], "run": [], "coverage read": []}
    keep = bytearray(65536)
    with Target(guest) as t:
        m, loop = t.machine, t.loop
        t0 = time.perf_counter()
        for _ in range(n):
            t.run(seed)
        rate = n / (time.perf_counter() - t0)
        for _ in range(n // 4):  # the same steps as Target.run, timed one by one
            a = time.perf_counter_ns()
            m.restore(t.snapshot)
            b = time.perf_counter_ns()
            write_input(m, t.point, seed)
            c = time.perf_counter_ns()
            t._running = True
            loop.reset_kick()
            loop.run()
            t._running = False
            d = time.perf_counter_ns()
            keep[:] = t._cov
            e = time.perf_counter_ns()
            for key, v in zip(parts, (b - a, c - b, d - c, e - d), strict=True):
                parts[key].append(v)
    return rate, {k: statistics.median(v) / 1000 for k, v in parts.items()}


def main() -> int:
    if shutil.which("afl-fuzz") is None or shutil.which("afl-cc") is None:
        print("afl-fuzz/afl-cc not installed (apt-get install afl++): fuzz bench skipped")
        return 0
    guest, native = build()
    ours, theirs = [str(PYVMM), "fuzz-target", str(guest)], [str(native)]

    print(f"1. exec/s, one core, {RATE_SECONDS} s of afl-fuzz each (fuzzer_stats execs_per_sec)")
    rate, parts = python_loop(guest)
    _, s_ours = afl(ours, RATE_SECONDS, False)
    _, s_native = afl(theirs, RATE_SECONDS, False)
    e_ours, e_native = float(s_ours["execs_per_sec"]), float(s_native["execs_per_sec"])
    print(f"   afl-fuzz -> pyvmm fuzz-target (CPL3)  {e_ours:9.0f} exec/s   (target >= 2000)")
    print(f"   afl-fuzz -> native afl-cc persistent  {e_native:9.0f} exec/s   pyvmm/native "
          f"{e_ours / e_native:.2f}x")
    print(f"   pyvmm Target.run, Python loop         {rate:9.0f} exec/s   (no AFL)")

    print("\n2. one iteration under afl-fuzz (us, median)")
    inside = sum(parts.values())
    for k, v in parts.items():
        print(f"   {k:<22} {v:8.1f}")
    print(f"   {'AFL round trip':<22} {max(0.0, 1e6 / e_ours - inside):8.1f}   "
          f"(1/exec-rate {1e6 / e_ours:.0f} us minus the above)")

    print(f"\n3. time to the planted bug, afl-fuzz -D until the first crash (s; median of {RUNS}, "
          f"cap {CAP} s)")
    found: dict[str, list[float]] = {"pyvmm": [], "native": []}
    for _ in range(RUNS):
        for who, target in (("native", theirs), ("pyvmm", ours)):
            wall, s = afl(target, CAP, True)
            found[who].append(wall if int(s.get("saved_crashes", "0")) else float("inf"))
    med = {k: statistics.median(v) for k, v in found.items()}
    for who in ("pyvmm", "native"):
        runs = ", ".join("-" if v == float("inf") else f"{v:.0f}" for v in found[who])
        print(f"   {who:<7} {med[who]:8.1f} s   runs: {runs}")
    ratio = med["pyvmm"] / med["native"] if med["native"] else float("inf")
    print(f"   pyvmm/native {ratio:.1f}x   (target: within 10x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
