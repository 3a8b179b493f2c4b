#!/usr/bin/env python3
"""Snapshot costs (guests/snapshot.c, one vCPU, kernel irqchip), ratios measured in one run:

1. restore after the guest dirtied 1, 16 and 1024 pages, against creating a new machine
   (Machine.from_file + load) and against the bare ioctls of the state it restores (the
   same KVM_SET_* calls with their arguments prepared, timed alone);
2. a clone from a snapshot file (Machine.from_snapshot) against a fresh boot to the same
   point (Machine.from_file + run to GUEST_SYNC 1); and a clone of a saved hello with the
   split irqchip in a clone loop (issue 22: under 1 ms);
3. a fuzzing loop, iterations per second: restore -> write an input -> run to a SYNC ->
   read the result, against the same with a new machine each time.

Run with ``make bench``.  Medians; this host's timings vary ~2x run to run (HOST-KVM.md).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import installed  # noqa: F401  # first: refuses the source tree

from pyvmm import Machine
from pyvmm.snapshot import Snapshot, set_vcpu_state, set_vm_state

GUEST = Path(__file__).resolve().parent.parent / "guests" / "build" / "snapshot.elf"
HELLO = GUEST.with_name("hello.elf")
ROUNDS = 30


def boot(cmdline: str, **kw: object) -> Machine:
    m = Machine.from_file(GUEST, cmdline=cmdline, **kw)  # type: ignore[arg-type]
    r = m.run_to_sync(1, 30)
    assert r.status == "stopped", r.message
    return m


def med_us(fn: Callable[[], object], n: int = ROUNDS) -> float:
    fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e6


def bare_ioctls_us(m: Machine, snap: Snapshot) -> float:
    """The KVM_SET_* ioctls a restore issues (the restore's own functions), arguments
    prepared, plus the dirty-log read: nothing of the RAM copy, devices or checks."""
    p = snap.prepared(m)
    region = m.memory.regions[0]

    def ioctls() -> None:
        m.vm.get_dirty_log(region.slot, region.size // 4096)
        set_vcpu_state(m.vcpus[0], snap.vcpus[0], p.vcpus[0])
        set_vm_state(m, p)

    return med_us(ioctls)


def hello_clone_ms(path: Path) -> float:
    """Issue 22's figure: ``Machine.from_snapshot`` of a saved hello with the split irqchip,
    after 10 warm-up clones (the interpreter, the file's checked metadata and the guest's
    symbols are then what a clone loop has), median of 50; the close is not timed."""
    with Machine.from_file(HELLO, irqchip="split") as m:
        assert m.run(timeout=10).ok
        m.save_snapshot(path)
    for _ in range(10):
        Machine.from_snapshot(path).close()
    ts = []
    for _ in range(50):
        t = time.perf_counter()
        c = Machine.from_snapshot(path)
        ts.append(time.perf_counter() - t)
        c.close()
    return statistics.median(ts) * 1e3


def main() -> int:
    if not GUEST.exists() or not HELLO.exists():
        print(f"missing {GUEST} or {HELLO}: run `make bench`", file=sys.stderr)
        return 2
    print("pyvmm snapshot bench: guests/snapshot.elf, 1 vCPU, kernel irqchip")

    def new_machine() -> None:
        with Machine.from_file(GUEST):
            pass

    t_new = med_us(new_machine, 15)
    print("\n1. restore after the guest wrote N pages (us, median)")
    print(f"   new machine (from_file + load + close)   {t_new:9.0f} us   (the reference)")
    for pages in (1, 16, 1024):
        with boot(f"dirty {pages}") as m:
            snap = m.snapshot()

            def dirty_then_restore(m: Machine = m, snap: Snapshot = snap) -> float:
                r = m.run(timeout=30)
                assert r.ok, r.message
                t = time.perf_counter()
                m.restore(snap)
                return time.perf_counter() - t

            dirty_then_restore()
            t = statistics.median(dirty_then_restore() for _ in range(ROUNDS)) * 1e6
            bare = bare_ioctls_us(m, snap)
            print(f"   restore, {pages:4} dirty pages             {t:9.0f} us   bare ioctls "
                  f"{bare:5.0f} us: {t / bare:.2f}x (target <= 2x)   new machine / restore "
                  f"{t_new / t:5.1f}x (target >= 50x)")

    print("\n2. clone from a file vs a fresh boot to the same point (ms, median)")
    with tempfile.TemporaryDirectory() as d:
        for irqchip in ("kernel", "split"):
            path = Path(d) / f"{irqchip}.snap"
            with boot("fuzz", irqchip=irqchip) as m:
                m.snapshot().save(path)

            def clone(path: Path = path) -> None:
                Machine.from_snapshot(path).close()

            def fresh(irqchip: str = irqchip) -> None:
                boot("fuzz", irqchip=irqchip).close()

            c, f = med_us(clone, 15) / 1000, med_us(fresh, 15) / 1000
            print(f"   irqchip={irqchip:<6} clone {c:6.2f} ms   fresh boot {f:6.2f} ms   ratio "
                  f"{c / f:.2f}x   (target: clone < 2 ms)")
        hello_ms = hello_clone_ms(Path(d) / "hello.snap")
        print(f"   Machine.from_snapshot of a saved hello, split irqchip   {hello_ms:6.2f} ms   "
              "(target < 1 ms)")

    print("\n3. fuzzing loop: restore, write an input, run to GUEST_SYNC 4, read it")
    with boot("fuzz") as m:
        assert m.symbols is not None
        page = m.symbols.address_of("host_page")
        snap = m.snapshot()
        n = 200
        t = time.perf_counter()
        for i in range(n):
            m.restore(snap)
            m.memory.write_int(page, 8, i)
            r = m.run(timeout=30)
            assert r.syncs(4)[0].args[1] == i * 3 + 41, r.events
        restored = n / (time.perf_counter() - t)
    n = 20
    t = time.perf_counter()
    for i in range(n):
        with boot("fuzz") as fresh_m:
            fresh_m.memory.write_int(page, 8, i)
            r = fresh_m.run(timeout=30)
            assert r.syncs(4)[0].args[1] == i * 3 + 41, r.events
    fresh_rate = n / (time.perf_counter() - t)
    print(f"   restore each iteration   {restored:8.0f} it/s   (no target: the rate a fuzzer gets)")
    print(f"   new machine each time    {fresh_rate:8.0f} it/s   restore/new {restored / fresh_rate:.1f}x   "
          "(the reference)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
