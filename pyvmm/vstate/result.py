"""What a run produced (:class:`RunResult`) and why each vCPU stopped (:class:`Outcome`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pyvmm.errors import ExitStatus

if TYPE_CHECKING:
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


@dataclass
class Outcome:
    """Why one vCPU stopped: ``kind`` is a :class:`RunStatus`; ``code`` the guest's value
    (debug-exit); ``reason`` one line; ``details`` what else was seen (the guest event, a
    traceback, KVM's internal-error data)."""

    kind: RunStatus
    vcpu: int
    code: int | None = None
    reason: str = ""
    exit_reason: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunResult:
    """What a run produced.

    ``serial`` and ``events`` hold this run's output and guest events up to the machine's
    history limits (``serial_dropped`` / ``events_dropped`` count what did not fit);
    ``stats`` are KVM's binary statistics that moved (counters as deltas), per scope
    (``vm``, ``vcpu0``, ...), and ``histograms`` the histogram statistics that moved.
    """

    status: RunStatus
    exit_code: int | None
    serial: bytes = b""
    message: str = ""
    exit_counts: dict[str, int] = field(default_factory=dict)
    vcpu_exit_counts: list[dict[str, int]] = field(default_factory=list)
    fast_hits: dict[str, int] = field(default_factory=dict)
    kvm_runs: int = 0
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    histograms: dict[str, dict[str, tuple[int, ...]]] = field(default_factory=dict)
    crash: GuestCrash | None = None
    unclaimed: list[str] = field(default_factory=list)
    duration: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[GuestEvent] = field(default_factory=list)
    assertion: GuestEvent | None = None
    serial_dropped: int = 0
    events_dropped: int = 0
    #: the signal that interrupted the run (SIGINT, SIGTERM, SIGHUP), if one did
    signal: int | None = None
    #: every exit and guest event recorded so far, when the machine traces
    #: (:meth:`Machine.enable_trace`, ``pyvmm run --trace``)
    trace: ExitTrace | None = None
    #: KVM's own events, when the machine has a capture (:meth:`Machine.kvm_trace`;
    #: complete once its ``with`` block has ended)
    kvm_trace: KvmTrace | None = None

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
