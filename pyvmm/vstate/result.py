"""What a run produced (:class:`RunResult`) and why each vCPU stopped (:class:`Outcome`)."""

from __future__ import annotations

from enum import StrEnum

from pyvmm.errors import ExitStatus
from pyvmm.record import Record

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.crash import GuestCrash
    from pyvmm.devices.ucall import GuestEvent
    from pyvmm.kvmtrace import KvmTrace
    from pyvmm.vstate.trace import ExitTrace


class RunStatus(StrEnum):
    """How a run ended (compare with plain strings too: ``r.status == "exit"``)."""

    EXIT = "exit"  # the guest wrote the debug-exit port; exit_code is the value
    DONE = "done"  # GUEST_DONE
    SHUTDOWN = "shutdown"  # the guest powered off (system event, Bochs/ACPI port)
    ASSERT = "assert"  # GUEST_ASSERT failed or an exception had no handler (see assertion)
    CRASH = "crash"  # triple fault, emulation failure, internal error (see crash)
    IO_ERROR = "io-error"  # strict I/O, or I/O this machine cannot serve
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # Machine.stop()
    INTERRUPTED = "interrupted"  # Ctrl-C or another signal
    DEBUG = "debug"  # a debug exit (single-step, breakpoint)
    ERROR = "error"  # KVM or the VMM failed; message says why
    KICKED = "kicked"  # one vCPU stopped from outside (never a run's final status)
    SUSPEND = "suspend"  # the guest entered ACPI S3; the run goes on when it wakes


#: statuses after which the guest cannot go on
FINAL = frozenset({RunStatus.EXIT, RunStatus.DONE, RunStatus.SHUTDOWN, RunStatus.ASSERT,
                   RunStatus.CRASH})

EXIT_STATUS: dict[RunStatus, ExitStatus] = {
    RunStatus.SHUTDOWN: ExitStatus.OK,
    RunStatus.DONE: ExitStatus.OK,
    RunStatus.ASSERT: ExitStatus.GUEST_ASSERT,
    RunStatus.TIMEOUT: ExitStatus.TIMEOUT,
    RunStatus.CRASH: ExitStatus.GUEST_CRASH,
    RunStatus.IO_ERROR: ExitStatus.GUEST_IO,
    RunStatus.INTERRUPTED: ExitStatus.INTERRUPTED,
    RunStatus.ERROR: ExitStatus.VMM_ERROR,
    RunStatus.STOPPED: ExitStatus.INTERRUPTED,
    RunStatus.DEBUG: ExitStatus.VMM_ERROR,
}


def exit_status(r: RunResult, qemu: bool = False) -> int:
    """The status ``pyvmm run`` exits with for ``r``: the guest's debug-exit value (at most
    255; with ``qemu``, what QEMU's isa-debug-exit makes of it: ``(v << 1) | 1`` in 8 bits),
    128 + the signal that interrupted the run, else the run status's :class:`ExitStatus`."""
    if r.status == RunStatus.EXIT:
        code = r.exit_code or 0
        return ((code << 1) | 1) & 0xFF if qemu else min(code, 255)
    if r.status == RunStatus.INTERRUPTED and r.signal:
        return 128 + r.signal
    return int(EXIT_STATUS.get(r.status, ExitStatus.VMM_ERROR))


class Outcome(Record):
    """Why one vCPU stopped: ``kind`` is a :class:`RunStatus`; ``code`` the guest's value
    (debug-exit); ``reason`` one line; ``details`` what else was seen (the guest event, a
    traceback, KVM's internal-error data)."""

    _fields = ("kind", "vcpu", "code", "reason", "exit_reason", "details")

    def __init__(self, kind: RunStatus, vcpu: int, code: int | None = None, reason: str = "",
                 exit_reason: int | None = None, details: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.vcpu = vcpu
        self.code = code
        self.reason = reason
        self.exit_reason = exit_reason
        self.details: dict[str, Any] = {} if details is None else details


class RunResult(Record):
    """What a run produced.

    ``serial`` and ``events`` hold this run's output and guest events up to the machine's
    history limits (``serial_dropped`` / ``events_dropped`` count what did not fit);
    ``stats`` are KVM's binary statistics that moved (counters as deltas), per scope
    (``vm``, ``vcpu0``, ...), and ``histograms`` the histogram statistics that moved.
    """

    _fields = ("status", "exit_code", "serial", "message", "exit_counts", "vcpu_exit_counts",
               "fast_hits", "kvm_runs", "stats", "histograms", "crash", "unclaimed", "duration",
               "outcomes", "events", "assertion", "serial_dropped", "events_dropped", "signal",
               "trace", "kvm_trace")

    def __init__(self, status: RunStatus, exit_code: int | None, serial: bytes = b"",
                 message: str = "", exit_counts: dict[str, int] | None = None,
                 vcpu_exit_counts: list[dict[str, int]] | None = None,
                 fast_hits: dict[str, int] | None = None, kvm_runs: int = 0,
                 stats: dict[str, dict[str, int]] | None = None,
                 histograms: dict[str, dict[str, tuple[int, ...]]] | None = None,
                 crash: GuestCrash | None = None, unclaimed: list[str] | None = None,
                 duration: float = 0.0, outcomes: list[Outcome] | None = None,
                 events: list[GuestEvent] | None = None, assertion: GuestEvent | None = None,
                 serial_dropped: int = 0, events_dropped: int = 0, signal: int | None = None,
                 trace: ExitTrace | None = None, kvm_trace: KvmTrace | None = None) -> None:
        self.status = status
        self.exit_code = exit_code
        self.serial = serial
        self.message = message
        self.exit_counts: dict[str, int] = {} if exit_counts is None else exit_counts
        self.vcpu_exit_counts: list[dict[str, int]] = (
            [] if vcpu_exit_counts is None else vcpu_exit_counts)
        self.fast_hits: dict[str, int] = {} if fast_hits is None else fast_hits
        self.kvm_runs = kvm_runs
        self.stats: dict[str, dict[str, int]] = {} if stats is None else stats
        self.histograms: dict[str, dict[str, tuple[int, ...]]] = (
            {} if histograms is None else histograms)
        self.crash = crash
        self.unclaimed: list[str] = [] if unclaimed is None else unclaimed
        self.duration = duration
        self.outcomes: list[Outcome] = [] if outcomes is None else outcomes
        self.events: list[GuestEvent] = [] if events is None else events
        self.assertion = assertion
        self.serial_dropped = serial_dropped
        self.events_dropped = events_dropped
        #: the signal that interrupted the run (SIGINT, SIGTERM, SIGHUP), if one did
        self.signal = signal
        #: every exit and guest event recorded so far, when the machine traces
        #: (:meth:`Machine.enable_trace`, ``pyvmm run --trace``)
        self.trace = trace
        #: KVM's own events, when the machine has a capture (:meth:`Machine.kvm_trace`;
        #: complete once its ``with`` block has ended)
        self.kvm_trace = kvm_trace

    @property
    def ok(self) -> bool:
        """The guest exited with status 0 or said GUEST_DONE."""
        return (self.status == RunStatus.EXIT and self.exit_code == 0) or self.status == RunStatus.DONE

    def syncs(self, stage: int | None = None) -> list[GuestEvent]:
        """The GUEST_SYNC events, optionally only those of one stage."""
        return [e for e in self.events if e.kind == "sync" and (stage is None or e.stage == stage)]

    @property
    def prints(self) -> list[str]:
        return [e.text for e in self.events if e.kind == "print"]

    @property
    def text(self) -> str:
        return self.serial.decode("utf-8", "replace")
