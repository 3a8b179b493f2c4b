#!/usr/bin/env python3
"""What capturing KVM's own events costs (pyvmm.kvmtrace, ``--kvm-trace``), interleaved
round by round against the same run without it:

1. per exit, on the PIO round trip (bench/pio_loop.S, the C loop): the default event set;
2. whole ``pyvmm run hello`` processes: off, ``--kvm-trace``, ``--kvm-trace --kvm-stacks``;
3. a 100,000-exit guest with the default set: run time, events captured and lost, the
   bytes copied, and the time to decode them; and the same capture read as text from the
   instance's ``trace_pipe`` instead of the binary per-CPU pages (why pyvmm reads binary).

Needs root and tracefs (skipped with the reason otherwise).  Medians over the rounds.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import installed  # noqa: F401  # first: refuses the source tree

from pyvmm import Machine
from pyvmm.kvmtrace import KvmTrace, KvmTraceError
from pyvmm.kvmtrace.session import DEFAULT_EVENTS
from pyvmm.kvmtrace.tracefs import Instance, find_tracefs

HERE = Path(__file__).resolve().parent
ELF = HERE / "build" / "pio_loop.elf"
HELLO = HERE.parent / "guests" / "build" / "hello.elf"
PYVMM = Path(sys.executable).parent / "pyvmm"
EXITS = int(os.environ.get("BENCH_EXITS", "20000"))
BIG = 100_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))


def pio(n: int, trace: bool) -> tuple[float, KvmTrace | None]:
    """ns per exit of ``n`` port writes, with or without the default capture."""
    with Machine.from_elf(ELF, mem="64M") as m:
        assert m.image is not None
        m.memory.write_int(m.image.symbols.address_of("bench_count"), 8, n)
        loop = m.vcpu_loop(0)
        kt = m.kvm_trace() if trace else None
        if kt is not None:
            kt.start()
        try:
            t0 = time.perf_counter_ns()
            out = loop.run()
            dt = time.perf_counter_ns() - t0
        finally:
            if kt is not None:
                kt.stop()
        assert out.kind == "exit" and out.code == 0, out
        return dt / loop.kvm_runs, kt


def process(args: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([str(PYVMM), "run", *args, str(HELLO)], check=True, capture_output=True)
    return time.perf_counter() - t0


def text_capture(n: int) -> tuple[float, int, int]:
    """The default set read as text from ``trace_pipe`` by a thread (what pyvmm does not
    do): run seconds, lines read, and the reader thread's CPU seconds."""
    root = find_tracefs()
    inst = Instance.create(root)
    lines = 0
    cpu = 0.0
    try:
        inst.write("trace_clock", "mono")
        inst.write("buffer_size_kb", "4096")
        inst.write("options/event-fork", "1")
        inst.write("set_event_pid", " ".join(os.listdir("/proc/self/task")))
        for spec in DEFAULT_EVENTS:
            g, name = spec.split(":")
            if (root / "events" / g / name).is_dir():
                inst.write(f"events/{g}/{name}/enable", "1")
        stop = threading.Event()
        fd = os.open(inst.path / "trace_pipe", os.O_RDONLY | os.O_NONBLOCK)

        def reader() -> None:
            nonlocal lines, cpu
            t = time.thread_time()
            while True:
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    if stop.is_set():
                        break
                    time.sleep(0.01)
                    continue
                lines += chunk.count(b"\n")
            cpu = time.thread_time() - t

        th = threading.Thread(target=reader)
        th.start()
        t0 = time.perf_counter()
        pio(n, False)
        dt = time.perf_counter() - t0
        inst.write("tracing_on", "0")
        stop.set()
        th.join()
        os.close(fd)
    finally:
        inst.remove()
    return dt, lines, int(cpu * 1e6)


def main() -> int:
    try:
        with KvmTrace(["kvm:kvm_pio"]):
            pass
    except KvmTraceError as e:
        print(f"kvmtrace bench skipped: {e}")
        return 0
    off: list[float] = []
    on: list[float] = []
    for _ in range(ROUNDS):
        off.append(pio(EXITS, False)[0])
        on.append(pio(EXITS, True)[0])
    a, b = statistics.median(off), statistics.median(on)
    print(f"\nkvmtrace 1. PIO round trip, {EXITS} exits, C loop (median of {ROUNDS}):")
    print(f"  off {a:8.0f} ns/exit   default --kvm-trace {b:8.0f} ns/exit   "
          f"+{b - a:.0f} ns/exit ({b / a:.2f}x)")
    rows: dict[str, list[float]] = {"off": [], "--kvm-trace": [], "--kvm-trace --kvm-stacks": []}
    for _ in range(ROUNDS):
        for label in rows:
            rows[label].append(process(label.split() if label != "off" else []))
    print(f"kvmtrace 2. whole `pyvmm run hello` (median of {ROUNDS}):")
    base = statistics.median(rows["off"])
    for label, xs in rows.items():
        t = statistics.median(xs)
        print(f"  {label:<26} {t * 1000:7.1f} ms  (+{(t - base) * 1000:.1f} ms)")
    t0 = time.perf_counter()
    per_exit, kt = pio(BIG, True)
    run_s = time.perf_counter() - t0
    assert kt is not None
    t1 = time.perf_counter()
    n = len(kt.records)
    decode = time.perf_counter() - t1
    plain = pio(BIG, False)[0]
    print(f"kvmtrace 3. {BIG} exits with the default set: {per_exit:.0f} ns/exit "
          f"(off: {plain:.0f}), whole run {run_s:.2f} s, {n} KVM events, {kt.lost} lost, "
          f"decoded in {decode:.2f} s ({decode / max(n, 1) * 1e9:.0f} ns/event)")
    dt, lines, cpu_us = text_capture(BIG)
    print(f"  the same read as text (trace_pipe): run {dt:.2f} s, {lines} lines, "
          f"reader CPU {cpu_us / 1e6:.2f} s; binary pages read: the kernel formats nothing")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
