#!/usr/bin/env python3
"""User mode (CPL3) against CPL0 and the host CPU (guests/usermode.c, issue 20):

1. the same DEC;JNZ loop, nanoseconds per instruction, at CPL3 and at CPL0 under pyvmm
   and on the host CPU itself (``build/native_loop``: the limit);
2. the round trip of one GUEST_USER_CALL (CPL0 -> fn at CPL3 -> back), of one system call
   from user code into the runtime (GUEST_SYS_NOP) and of one GUEST_SYNC made from CPL3
   and from CPL0, each with the CPL0 instructions KVM emulated for it (``insn_emulation``
   read at the guest's GUEST_SYNC 42 markers, less what the markers add);
3. the floor: what the host's own transitions cost with nothing of the runtime around
   them (``floor`` mode): the cheapest call shape (IRETQ to a CPL3 ud2, whose #UD gate
   loops straight back), one event delivery (#UD from CPL3 to its gate) and one IRETQ to
   CPL3, and IRETQ CPL0 -> CPL0 as one emulated instruction.

The guest counts TSC cycles (the guest TSC is the host's on kvm_pvm; KVM_GET_TSC_KHZ gives
its rate either way).  Targets from the issue: the CPL3 loop within 1.2x of native, a user
call under 10 us.  Medians of BENCH_ROUNDS runs (default 5) with [min-max], interleaved;
this host's timings vary ~2x run to run (HOST-KVM.md), so compare a row with the floor of
the same run.
"""

from __future__ import annotations

import itertools
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import installed  # noqa: F401  # first: refuses the source tree

from pyvmm import Machine
from pyvmm.devices.ucall import GuestEvent

HERE = Path(__file__).resolve().parent
GUEST = HERE.parent / "guests" / "build" / "usermode.elf"
NATIVE = HERE / "build" / "native_loop"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
LOOP = 200_000_000  # CPL3 iterations; CPL0 runs LOOP / 1000 (emulated: ~1000x slower)
CALLS = 200
FLOOR = 500  # round trips per floor loop

Rows = dict[str, float]


def _run(cmdline: str, marker: int) -> tuple[dict[int, tuple[int, ...]], list[int], float]:
    """Run the guest; its syncs by stage, insn_emulation at each ``marker`` sync, ns/cycle."""
    with Machine.from_file(GUEST, cmdline=cmdline) as m:
        khz = m.vcpus[0].get_tsc_khz()
        emu: list[int] = []

        def count(ev: GuestEvent) -> None:
            if ev.args and ev.args[0] == marker:
                v = m.stats()["vcpu0"]["insn_emulation"]
                emu.append(v if isinstance(v, int) else sum(v))
        m.on_sync(count)
        r = m.run(timeout=300)
        if r.status != "done":
            sys.exit(f"usermode guest ({cmdline}): {r.message or r.status}")
        syncs = {e.args[0]: e.args for e in r.syncs() if e.args[0] != marker}
    return syncs, emu, 1e6 / khz


def _per_item(emu: list[int], n: int) -> list[float]:
    """Emulated instructions per item between markers, less the last pair (the markers)."""
    d = [b - a for a, b in itertools.pairwise(emu)]
    return [(x - d[-1]) / n for x in d[:-1]]


def guest_round() -> Rows:
    syncs, emu, ns = _run(f"speed {LOOP} {CALLS}", 42)
    _, c3, n3, c0, n0 = syncs[40]
    _, cc, nc, cs, n_s = syncs[41]
    _, s3, s0, n_y, io = syncs[43]
    i_call, i_sys, i_s3, i_s0 = _per_item(emu, CALLS)
    return {"cpl3": c3 * ns / (2 * n3), "cpl0": c0 * ns / (2 * n0),
            "call": cc * ns / nc / 1e3, "sys": cs * ns / n_s / 1e3,
            "sync3": s3 * ns / n_y / 1e3, "sync0": s0 * ns / n_y / 1e3,
            "i_call": i_call, "i_sys": i_sys, "i_sync3": i_s3, "i_sync0": i_s0, "io": io}


def floor_round() -> Rows:
    syncs, emu, ns = _run(f"floor {FLOOR}", 60)
    _, bare, resume, deliver, back, iret0 = syncs[61]
    i_bare, i_resume, _, i_iret0 = _per_item(emu, FLOOR)
    us = ns / FLOOR / 1e3
    return {"bare": bare * us, "resume": resume * us, "deliver": deliver * us,
            "back": back * us, "iret0": iret0 * us, "i_bare": i_bare, "i_resume": i_resume,
            "i_iret0": i_iret0, "iopl_gp": syncs[62][1]}


def native_round(khz: int) -> float:
    out = subprocess.run([str(NATIVE), str(LOOP)], check=True, capture_output=True, text=True)
    return int(out.stdout) * 1e6 / khz / (2 * LOOP)


def tsc_khz() -> int:
    with Machine.from_file(GUEST, cmdline="call") as m:
        return m.vcpus[0].get_tsc_khz()


def fmt(xs: list[float], unit: str, digits: int = 1) -> str:
    return f"{statistics.median(xs):.{digits}f} {unit} [{min(xs):.{digits}f}-{max(xs):.{digits}f}]"


def main() -> None:
    for f in (GUEST, NATIVE):
        if not f.exists():
            sys.exit(f"{f}: missing (make guests; make -C bench)")
    khz = tsc_khz()
    native: list[float] = []
    rows: dict[str, list[float]] = {}
    for _ in range(ROUNDS):  # interleaved, so drift hits every row alike
        native.append(native_round(khz))
        for k, v in (guest_round() | floor_round()).items():
            rows.setdefault(k, []).append(v)
    nat = statistics.median(native)
    med: Callable[[str], float] = lambda k: statistics.median(rows[k])  # noqa: E731
    row: Callable[[str], str] = lambda k: fmt(rows[k], "us")  # noqa: E731
    print(f"user mode (CPL3) vs CPL0, {ROUNDS} rounds, TSC {khz / 1e6:.3f} GHz")
    print(f"  DEC;JNZ loop, host CPU natively   {fmt(native, 'ns/insn', 3)}")
    print(f"  DEC;JNZ loop, pyvmm guest at CPL3 {fmt(rows['cpl3'], 'ns/insn', 3)}  "
          f"{med('cpl3') / nat:.2f}x native (target <= 1.2x)")
    print(f"  DEC;JNZ loop, pyvmm guest at CPL0 {fmt(rows['cpl0'], 'ns/insn')}  "
          f"{med('cpl0') / nat:.0f}x native")
    print(f"  GUEST_USER_CALL round trip        {row('call')}  (target < 10 us), "
          f"{med('i_call'):.0f} CPL0 instructions emulated (with the caller's loop)")
    print(f"  user system call round trip       {row('sys')}, "
          f"{med('i_sys'):.0f} CPL0 instructions")
    io = "its own OUT (TSS I/O bitmap)" if med("io") else "a system call (no I/O bitmap here)"
    print(f"  GUEST_SYNC from CPL3              {row('sync3')}, "
          f"{med('i_sync3'):.0f} CPL0 instructions: {io}")
    print(f"  GUEST_SYNC from CPL0              {row('sync0')}, "
          f"{med('i_sync0'):.0f} CPL0 instructions")
    print("floor: the host's own transitions, nothing of the runtime around them")
    print(f"  IRETQ -> ud2 at CPL3 -> #UD -> back {row('bare')}, "
          f"{med('i_bare'):.0f} CPL0 instructions (mov; IRETQ; dec; jnz): the cheapest call")
    print(f"  ud2 at CPL3 -> #UD -> IRETQ back  {row('resume')}, "
          f"{med('i_resume'):.0f} CPL0 instructions (addq; IRETQ)")
    print(f"  one event delivery (#UD, CPL3)    {row('deliver')}")
    print(f"  one IRETQ to CPL3 (+RDTSC, addq)  {row('back')}")
    print(f"  IRETQ CPL0 -> CPL0 loop           {row('iret0')}, "
          f"{med('i_iret0'):.0f} CPL0 instructions (mov; IRETQ; dec; jnz)")
    print(f"  OUT at CPL3 with IOPL 3            {'#GP' if med('iopl_gp') else 'works'}")


if __name__ == "__main__":
    main()
