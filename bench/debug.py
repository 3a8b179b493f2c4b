#!/usr/bin/env python3
"""Debugging costs, each a ratio against a reference measured in the same run:

1. ``--trace``: the PIO exit round trip of the C loop with the exit ring on, against the
   same loop with it off (interleaved rounds; target <= 1.05x).
2. An attached debugger with no breakpoints: exits under ``Machine.debug.cont()`` against
   ``Machine.run()`` (target 1.00x: guest debugging stays off).
3. Single-step rate through the gdb remote protocol: ``pyvmm run --gdb`` against QEMU's
   gdbstub (``-s -S``) on the same multiboot kernel (guests/debugme.flat, spinning), driven
   by the same minimal RSP client doing what gdb's ``stepi`` does (``vCont;s``, then ``g``).

Run with ``make bench``.
"""

from __future__ import annotations

import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from installed import PYVMM  # first: refuses the source tree

from pyvmm import Machine

HERE = Path(__file__).resolve().parent
ELF = HERE / "build" / "pio_loop.elf"
DEBUGME = HERE.parent / "guests" / "build" / "debugme.flat"
EXITS = 20000
ROUNDS = 7
STEPS = 2000


def frame(payload: bytes) -> bytes:
    return b"$" + payload + b"#%02x" % (sum(payload) & 0xFF)


class Client:
    """The smallest RSP client: no-ack mode, one packet out, one reply in."""

    def __init__(self, port: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.ack = True
        self.ask(b"qSupported:multiprocess-;swbreak+;hwbreak+")
        if self.ask(b"QStartNoAckMode") == b"OK":
            self.ack = False

    def ask(self, payload: bytes) -> bytes:
        self.s.sendall(frame(payload))
        while True:
            m = re.search(rb"\$([^#]*)#..", self.buf)
            if m:
                self.buf = self.buf[m.end():]
                if self.ack:
                    self.s.sendall(b"+")
                return m.group(1)
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("the stub closed the connection")
            self.buf += chunk

    def steps_per_second(self, n: int) -> float:
        self.ask(b"?")
        t0 = time.perf_counter()
        for _ in range(n):
            reply = self.ask(b"vCont;s:1")
            assert reply.startswith(b"T05"), reply
            self.ask(b"g")
        return n / (time.perf_counter() - t0)

    def close(self) -> None:
        self.s.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pyvmm_steps() -> float:
    port = free_port()
    p = subprocess.Popen([*PYVMM, "run", "--gdb", f"127.0.0.1:{port}", "--append", "spin",
                          str(DEBUGME)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        c = Client(port)
        rate = c.steps_per_second(STEPS)
        c.ask(b"vKill;1")
        c.close()
        return rate
    finally:
        p.kill()
        p.wait()


def qemu_steps(qemu: str) -> float | None:
    for cpu in ("host", "kvm64"):
        port = free_port()
        p = subprocess.Popen([qemu, "-accel", "kvm", "-cpu", cpu, "-M", "pc", "-m", "128",
                              "-nodefaults", "-no-user-config", "-display", "none",
                              "-serial", "null", "-kernel", str(DEBUGME), "-append", "spin",
                              "-S", "-gdb", f"tcp:127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            c = Client(port)
            rate = c.steps_per_second(STEPS)
            c.close()
            return rate
        except (OSError, AssertionError):
            continue
        finally:
            p.kill()
            p.wait()
    return None


def exits(trace: bool = False, debugger: bool = False) -> float:
    """ns per PIO exit over EXITS exits of bench/pio_loop.elf."""
    with Machine.from_elf(ELF, mem="64M") as m:
        assert m.image is not None
        m.memory.write_int(m.image.symbols.address_of("bench_count"), 8, EXITS)
        if trace:
            m.enable_trace()
        t0 = time.perf_counter_ns()
        r = m.debug.cont().result if debugger else m.run()
        dt = time.perf_counter_ns() - t0
        assert r.exit_code == 0, r.message
        return dt / r.kvm_runs


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main() -> int:
    for f in (ELF, DEBUGME):
        if not f.exists():
            print(f"missing {f}: run `make bench`", file=sys.stderr)
            return 2
    print(f"pyvmm debug bench: {EXITS} PIO exits per measurement, {ROUNDS} interleaved rounds")
    exits()
    plain, traced, debugged = [], [], []
    for _ in range(ROUNDS):
        plain.append(exits() / 1000)
        traced.append(exits(trace=True) / 1000)
        debugged.append(exits(debugger=True) / 1000)
    print("\n1. --trace: PIO exit round trip, C loop (us per exit, median)")
    print(f"   without trace      {med(plain):7.2f} us   (the reference)")
    print(f"   with trace         {med(traced):7.2f} us   ratio "
          f"{med([t / p for t, p in zip(traced, plain, strict=True)]):.3f}x  (target <= 1.05x)")
    print("\n2. attached debugger, no breakpoints (Machine.debug.cont vs Machine.run)")
    print(f"   debugger attached  {med(debugged):7.2f} us   ratio "
          f"{med([d / p for d, p in zip(debugged, plain, strict=True)]):.3f}x  (target 1.00x)")
    print(f"\n3. single-step rate through the gdb remote protocol ({STEPS} x vCont;s + g, "
          "guests/debugme.flat)")
    ours = [pyvmm_steps() for _ in range(3)]
    print(f"   pyvmm --gdb        {med(ours):8.0f} steps/s   (target: QEMU's rate below, or more)")
    qemu = shutil.which("qemu-system-x86_64")
    theirs = [qemu_steps(qemu) for _ in range(3)] if qemu else []
    got = [t for t in theirs if t]
    if got:
        print(f"   QEMU -s -S         {med(got):8.0f} steps/s   pyvmm/QEMU {med(ours) / med(got):.2f}x "
              "(target >= 1.00x: higher is better)")
    else:
        print("   QEMU               not installed or did not start: pyvmm's figure only")
    return 0


if __name__ == "__main__":
    sys.exit(main())
