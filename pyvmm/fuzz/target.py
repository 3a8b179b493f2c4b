"""A fuzz target: one VM, reset by snapshot for every input.

The guest asks for input with ``GUEST_FUZZ_INPUT(buf, maxlen)`` (``<pyvmm/fuzz.h>``), a
GUEST_SYNC of stage :data:`FUZZ_STAGE` that carries the buffer, its size and where the
length goes.  :class:`Target` boots the guest to the first one, checks those values
against guest RAM (the guest is hostile: they are its word), zeroes the coverage map and
takes a snapshot there.  :meth:`Target.run` then restores the snapshot (the pages written
since, only), writes the input and its length, runs the vCPU until the input's end
(GUEST_DONE, exit, the next GUEST_FUZZ_INPUT, a crash, an assertion or the deadline) and
hands back the outcome with the coverage map as the guest left it.

The vCPU is driven through its own run loop (``Machine.vcpu_loop``), not ``Machine.run``:
a run's threads and statistics would cost more than the guest's work for most inputs.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvmm.config import check_timeout
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.ucall import GuestEvent
from pyvmm.errors import ConfigError, ExitStatus, PyvmmError
from pyvmm.fuzz.watchdog import Watchdog
from pyvmm.machine import Machine
from pyvmm.vstate.history import HistoryLimits
from pyvmm.vstate.result import Outcome, RunStatus

if TYPE_CHECKING:
    import os

    from pyvmm.snapshot import Snapshot

#: GUEST_FUZZ_STAGE in <pyvmm/fuzz.h>
FUZZ_STAGE = 0x46555A5A
#: the coverage map's symbols in guests built with --coverage (fuzz_cov.c)
COV_MAP, COV_PREV = "__pyvmm_cov_map", "__pyvmm_cov_prev"
#: the largest input buffer a guest may offer (AFL's own limit on a test case: MAX_FILE)
MAX_INPUT = 1 << 20
#: the largest coverage map read from a guest (AFL's FS_OPT_MAX_MAPSIZE)
MAX_MAP = 1 << 23


class FuzzSetupError(PyvmmError):
    """The guest cannot be fuzzed: it never reached GUEST_FUZZ_INPUT, or what it passed
    there (buffer, size, length pointer) or its coverage map is not in guest RAM."""

    status = ExitStatus.GUEST_IMAGE


@dataclass
class FuzzResult:
    """What one input did.  ``status``: ``ok`` (GUEST_DONE, an exit, the next
    GUEST_FUZZ_INPUT), ``crash`` (unhandled exception, triple fault, emulation failure),
    ``assert`` (GUEST_ASSERT) or ``timeout``; ``signal`` is the one AFL expects for it
    (0, SIGSEGV, SIGABRT, SIGKILL); ``coverage`` the guest's map (a read-only view of
    guest RAM: valid until the next run, ``bytes()`` it to keep it)."""

    status: str
    signal: int
    exit_code: int
    reason: str
    coverage: memoryview
    exec_ns: int
    event: GuestEvent | None = field(default=None, repr=False)

    @property
    def wait_status(self) -> int:
        """The outcome as waitpid(2) would give it: a signal, or an exit code << 8."""
        return self.signal if self.signal else (self.exit_code & 0xFF) << 8

    @property
    def edges(self) -> int:
        """How many map cells the input hit."""
        return len(self.coverage) - bytes(self.coverage).count(0)


@dataclass(frozen=True)
class InputPoint:
    """Where GUEST_FUZZ_INPUT wants its input: ``buf`` (``maxlen`` bytes) and the 8-byte
    length at ``length_at``; checked against guest RAM by :func:`input_point`."""

    buf: int
    maxlen: int
    length_at: int


def input_point(m: Machine, event: GuestEvent) -> InputPoint:
    """The input point of the GUEST_FUZZ_INPUT sync ``event``, every value checked."""
    if len(event.args) < 4 or event.args[0] != FUZZ_STAGE:
        raise FuzzSetupError(f"GUEST_SYNC stage {event.stage} is not GUEST_FUZZ_INPUT")
    buf, maxlen, length_at = event.args[1:4]
    if not 0 < maxlen <= MAX_INPUT:
        raise FuzzSetupError(f"GUEST_FUZZ_INPUT: buffer size {maxlen} is not 1..{MAX_INPUT} bytes")
    if not m.memory.is_ram(buf, maxlen):
        raise FuzzSetupError(f"GUEST_FUZZ_INPUT: buffer {buf:#x}+{maxlen:#x} is not in guest RAM")
    if not m.memory.is_ram(length_at, 8) or (buf <= length_at + 7 and length_at < buf + maxlen):
        raise FuzzSetupError(f"GUEST_FUZZ_INPUT: length at {length_at:#x} is not 8 bytes of guest "
                             "RAM outside the buffer")
    return InputPoint(buf, maxlen, length_at)


def coverage_map(m: Machine) -> tuple[int, int] | None:
    """``(address, size)`` of the guest's coverage map from its symbols; None when it was
    built without --coverage.  FuzzSetupError when the symbol is there but unusable."""
    syms = m.symbols
    if syms is None:
        return None
    found = [(a, s) for a, s, name in syms.entries if name == COV_MAP]
    if not found:
        return None
    addr, size = found[0]
    if not 0 < size <= MAX_MAP or size & (size - 1) or not m.memory.is_ram(addr, size):
        raise FuzzSetupError(f"the guest's coverage map {COV_MAP} ({addr:#x}, {size} bytes) is not "
                             "a power-of-two size in guest RAM")
    return addr, size


def write_input(m: Machine, point: InputPoint, data: bytes | bytearray | memoryview) -> int:
    """Put ``data`` (cut to the buffer's size) and its length where the guest wants them."""
    n = min(len(data), point.maxlen)
    if n:
        m.memory.write(point.buf, data[:n])
    m.memory.write_int(point.length_at, 8, n)
    return n


def classify(out: Outcome, timed_out: bool) -> tuple[str, int, int]:
    """``(status, signal, exit code)`` of a vCPU outcome, as a fuzzer counts it."""
    if timed_out or out.kind in (RunStatus.KICKED, RunStatus.TIMEOUT):
        return "timeout", signal.SIGKILL, 0
    if out.kind in (RunStatus.DONE, RunStatus.SHUTDOWN):
        return "ok", 0, 0
    if out.kind == RunStatus.EXIT:
        return "ok", 0, out.code or 0
    if out.kind == RunStatus.ASSERT:
        event = out.details.get("event")
        if isinstance(event, GuestEvent) and event.kind == "assert":
            return "assert", signal.SIGABRT, 0
        return "crash", signal.SIGSEGV, 0
    # S3 sleep and a debug exit are the guest's doing too: an input must not end the
    # campaign (no fuzzing run wakes a sleeping guest or serves a debugger)
    if out.kind in (RunStatus.CRASH, RunStatus.IO_ERROR, RunStatus.SUSPEND, RunStatus.DEBUG):
        return "crash", signal.SIGSEGV, 0
    raise PyvmmError(f"the fuzzing run failed: {out.reason or out.kind}")


class Target:
    """``guest`` (a path) booted to its first GUEST_FUZZ_INPUT, ready for :meth:`run`.

    ``timeout``: seconds one input may run (None: no limit; a hang then waits for
    :meth:`stop` or ``watch``'s process).  ``setup_timeout``: how long the boot to the
    input point may take.  ``cmdline``, ``mem`` and other keywords go to the machine.
    Close it (or use ``with``) to release the VM.
    """

    def __init__(self, guest: str | os.PathLike[str], *, cmdline: str = "",
                 timeout: float | None = 1.0, setup_timeout: float = 60.0,
                 serial: Callable[[bytes], None] | None = None, **machine_kw: Any) -> None:
        self.timeout = check_timeout(timeout)  # NaN refused; infinity is no limit
        if machine_kw.get("cpus", 1) != 1:  # inputs run on vCPU 0 alone (vcpu_loop(0))
            raise ConfigError("a fuzz target has one vCPU (cpus=1)")
        machine_kw.setdefault("history", HistoryLimits(serial=4096, events=64))
        self.machine = Machine.from_file(guest, cmdline=cmdline, serial=serial, **machine_kw)
        self._watchdog: Watchdog | None = None
        try:
            self._setup(setup_timeout)
        except BaseException:
            self.close()
            raise

    def _setup(self, setup_timeout: float) -> None:
        m = self.machine
        result = m.run_to_sync(FUZZ_STAGE, timeout=setup_timeout)
        syncs = result.syncs(FUZZ_STAGE)
        if not syncs:
            raise FuzzSetupError(f"the guest never reached GUEST_FUZZ_INPUT: it ended with "
                                 f"{result.status} ({result.message or 'no message'})")
        self.point = input_point(m, syncs[0])
        self.map = coverage_map(m)
        if self.map is not None:  # every input starts from an empty map and no edge
            m.memory.write(self.map[0], bytes(self.map[1]))
            prev = [a for a, _, name in m.symbols.entries if name == COV_PREV] if m.symbols else []
            if prev and m.memory.is_ram(prev[0], 8):
                m.memory.write_int(prev[0], 8, 0)
        self.snapshot: Snapshot = m.snapshot()
        self.loop = m.vcpu_loop(0)
        m.on_sync(self._end_at_next_input)
        self._running = False
        self._cov = (m.memory.view(*self.map).toreadonly() if self.map is not None
                     else memoryview(b""))
        self._watchdog = Watchdog(self.loop.kick)
        self.runs = 0

    @property
    def map_size(self) -> int:
        """The coverage map's size in bytes (0: built without --coverage)."""
        return self.map[1] if self.map is not None else 0

    def _end_at_next_input(self, ev: GuestEvent) -> None:
        if self._running and ev.stage == FUZZ_STAGE:
            raise GuestStop(0, "fuzz-input", ev)

    def watch(self, pidfd: int | None) -> None:
        """End the running input as a timeout when the process behind ``pidfd`` exits."""
        assert self._watchdog is not None
        self._watchdog.watch(pidfd)

    def run(self, data: bytes | bytearray | memoryview) -> FuzzResult:
        """One input: restore, write it (cut to the guest's buffer), run, classify."""
        m, loop, wd = self.machine, self.loop, self._watchdog
        assert wd is not None
        t0 = time.perf_counter_ns()
        m.restore(self.snapshot)
        write_input(m, self.point, data)
        loop.reset_kick()  # before arming: a kick the watchdog gives at once must stay
        wd.arm(self.timeout)
        self._running = True
        try:
            out = loop.run()
        finally:
            self._running = False
            timed_out = wd.disarm()
        loop.drain()
        status, sig, code = classify(out, timed_out)
        self.runs += 1
        event = out.details.get("event")
        return FuzzResult(status, sig, code, out.reason, self._cov, time.perf_counter_ns() - t0,
                          event if isinstance(event, GuestEvent) else None)

    def save_snapshot(self, path: str | os.PathLike[str]) -> None:
        """The input point's snapshot to ``path``: ``pyvmm run --from-snapshot PATH --input
        FILE`` replays an input from it."""
        from pyvmm.snapshot import save

        save(self.snapshot, path)

    def stop(self) -> None:
        """End the running input now (from another thread); it counts as a timeout."""
        self.loop.kick()

    def close(self) -> None:
        """Release the VM.  The coverage view results hold goes with it: reading it after
        raises ValueError (it pointed into guest RAM, which is unmapped now)."""
        if self._watchdog is not None:
            self._watchdog.close()
            self._watchdog = None
        cov = getattr(self, "_cov", None)
        if cov is not None:
            with contextlib.suppress(BufferError):
                cov.release()
        self.machine.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
