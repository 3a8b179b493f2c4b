"""Running every vCPU of a machine to one :class:`~pyvmm.vstate.result.RunResult`.

One thread per vCPU runs its :class:`~pyvmm.vstate.loop.VcpuLoop`; the calling thread
waits for the first final outcome, the timeout, :meth:`Runner.stop` or a signal, then kicks
every vCPU out of KVM_RUN (kicks race with a thread just entering it, so they repeat until
every thread has left), collects what the C loops counted, and builds the result.  While
waiting it wakes every 50 ms to have partial lines of guest output handed over, so a
prompt without a newline shows up at once.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping

from pyvmm.errors import Interrupted
from pyvmm.vstate.result import Outcome, RunResult, RunStatus

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.crash import GuestCrash
    from pyvmm.devices.bus import Bus
    from pyvmm.kvm.stats import StatDesc, StatValue
    from pyvmm.loader.symbols import Symbols
    from pyvmm.memory import GuestMemory
    from pyvmm.vstate.history import EventLog, SerialLog
    from pyvmm.vstate.loop import VcpuLoop

FLUSH_INTERVAL = 0.05
#: makes each runner's flags once, whichever thread comes first (Runner._flags)
_FLAGS_LOCK = threading.Lock()
#: how long one vCPU may run on the caller's thread before it moves to a thread of its own
INLINE_LIMIT = 0.05
Snapshot = dict[str, dict[str, "StatValue"]]

#: signal.SIGINT on Linux, pyvmm's only host (importing signal builds its enums)
_SIGINT = 2


def _traceback() -> str:
    """The exception being handled, formatted; traceback (with linecache, tokenize and
    textwrap) loads only when a run has one to report."""
    import traceback

    return traceback.format_exc()


class Runner:
    """Runs ``loops`` (one per vCPU) together.  ``stats()`` snapshots KVM's statistics
    per scope and ``descriptors(scope)`` describes them (which are cumulative)."""

    def __init__(self, loops: list[VcpuLoop], bus: Bus, memory: GuestMemory,
                 symbols: Callable[[], Symbols | None], serial: SerialLog, events: EventLog,
                 stats: Callable[[], Snapshot],
                 descriptors: Callable[[str], Mapping[str, StatDesc]],
                 on_suspend: Callable[[float | None, threading.Event], bool | Outcome] | None = None
                 ) -> None:
        self.loops = loops
        self.bus = bus
        self.memory = memory
        self.symbols = symbols
        self.serial = serial
        self.events = events
        self.stats = stats
        self.descriptors = descriptors
        #: ``on_suspend(seconds_left, stop_event)`` sleeps through ACPI S3 and readies the
        #: vCPUs to resume; False: no wake-up came (the run then ends as it would); an
        #: Outcome: the guest cannot resume and the run ends with it (a guest crash)
        self.on_suspend = on_suspend or (lambda left, stop: False)
        #: ``(done, stop)``, made on first use (:meth:`_flags`)
        self._events: tuple[threading.Event, threading.Event] | None = None
        self._stopped_by_host = False
        #: the loop running on the caller's thread and since when (see _leg_inline)
        self._inline: tuple[VcpuLoop, float] | None = None
        self._watchdog: threading.Thread | None = None
        self._closed = False

    def _flags(self) -> tuple[threading.Event, threading.Event]:
        """The run's two flags, made by whichever thread needs them first: a loop driven
        by hand (``Machine.vcpu_loop``) never does, and two Events were a tenth of the
        Python a new machine's first exit cost."""
        events = self._events
        if events is None:
            with _FLAGS_LOCK:
                if self._events is None:
                    self._events = (threading.Event(), threading.Event())
                events = self._events
        return events

    @property
    def _done(self) -> threading.Event:
        """Set when the current leg is over (a vCPU ended it, or a stop)."""
        return (self._events or self._flags())[0]

    @property
    def _stop(self) -> threading.Event:
        """Set by :meth:`stop`; cleared when the run it stopped is over."""
        return (self._events or self._flags())[1]

    def stop(self) -> None:
        """Ask a run in progress to stop every vCPU now; one asked for between runs stops
        the next run before any vCPU enters the guest (a debugger's pause cannot be lost
        in the gap between two runs)."""
        self._stopped_by_host = True
        self._stop.set()
        self._done.set()
        # kick now, not when the waiting thread wakes: called from a sync handler, the
        # vCPU must not enter the guest again (a snapshot at GUEST_SYNC is taken right there)
        for loop in self.loops:
            loop.kick()

    def run(self, timeout: float | None, python_loop: bool = False, *,
            vcpus: Collection[int] | None = None, collect_stats: bool = True) -> RunResult:
        """Run ``vcpus`` (indices; None: all) until an outcome.  ``collect_stats=False``
        skips the KVM stats snapshots around the run (a debugger's single steps).  A
        single vCPU named in ``vcpus`` starts on the calling thread (see _leg_inline)."""
        loops = self.loops if vcpus is None else [lp for lp in self.loops if lp.vcpu.id in vcpus]
        before = self.stats() if collect_stats else {}
        serial_mark, events_mark = self.serial.total, self.events.total
        t0 = time.monotonic()
        deadline = None if timeout is None else t0 + timeout
        try:
            result = self._run(loops, deadline, timeout, python_loop, t0)
        finally:
            self._stop.clear()
            self._stopped_by_host = False
        result.serial, result.serial_dropped = self.serial.since(serial_mark)
        result.events, result.events_dropped = self.events.since(events_mark)
        if collect_stats:
            from pyvmm.kvm.stats import delta, split

            after = self.stats()
            for scope in after:
                moved = delta(self.descriptors(scope), before.get(scope, {}), after[scope])
                result.stats[scope], result.histograms[scope] = split(moved)
        return result

    def close(self) -> None:
        """End the watchdog thread (if one was started)."""
        self._closed = True

    def _run(self, loops: list[VcpuLoop], deadline: float | None, timeout: float | None,
             python_loop: bool, t0: float) -> RunResult:
        # one vCPU picked by index runs on this thread first (single steps)
        inline = loops is not self.loops and len(loops) == 1
        while True:
            leg = None
            if inline:
                leg = self._leg_inline(loops[0], python_loop)
                inline = False
            if leg is None:  # not inline, or the watchdog moved a long leg to a thread
                leg = self._leg(loops, deadline, python_loop)
            outcomes, crashes, interrupted, signum = leg
            final = [o for o in outcomes if o.kind != RunStatus.KICKED]
            if final and final[0].kind == RunStatus.SUSPEND and not interrupted:
                # ACPI S3: the vCPUs are out; sleep until the platform's wake-up, then on
                left = None if deadline is None else deadline - time.monotonic()
                try:
                    resumed = self.on_suspend(left, self._stop)
                    if isinstance(resumed, Outcome):
                        outcomes.append(resumed)
                    elif resumed:
                        continue
                except KeyboardInterrupt:
                    interrupted, signum = "interrupted (SIGINT)", _SIGINT
                except Interrupted as e:
                    interrupted, signum = f"interrupted ({e.name})", e.signum
                outcomes = [o for o in outcomes if o.kind != RunStatus.SUSPEND]
            break
        duration = time.monotonic() - t0
        result = self._result(loops, outcomes, crashes, timeout, interrupted, duration)
        result.signal = signum
        return result

    def _leg_inline(self, loop: VcpuLoop, python_loop: bool
                    ) -> tuple[list[Outcome], list[GuestCrash], str | None, int | None] | None:
        """Run one vCPU on the calling thread (a debugger's single step: no thread to start
        and join).  A watchdog kicks it after INLINE_LIMIT seconds, because a signal cannot
        reach Python while the C loop runs on this thread: None then, and the caller goes
        on with a threaded leg.  A stop() kicks it at once."""
        if self._stop.is_set():
            return [], [], None, None
        self._start_watchdog()
        loop.reset_kick()
        interrupted: str | None = None
        signum: int | None = None
        out: Outcome | None = None
        self._inline = (loop, time.monotonic())
        try:
            if self._stop.is_set():  # a stop() between the check above and _inline
                loop.kick()
            out = loop.run_python() if python_loop else loop.run()
        except KeyboardInterrupt:
            interrupted, signum = "interrupted (SIGINT)", _SIGINT
        except Interrupted as e:
            interrupted, signum = f"interrupted ({e.name})", e.signum
        except Exception as e:  # a VMM bug or a device handler's error
            out = Outcome(RunStatus.ERROR, loop.vcpu.id, reason=f"{type(e).__name__}: {e}",
                          details={"traceback": _traceback()})
        finally:
            self._inline = None
            loop.collect()
        if out is not None and out.kind == RunStatus.KICKED and not self._stop.is_set() \
                and interrupted is None:
            return None  # the watchdog: a leg that blocks (HLT) goes on in a thread
        crashes = []
        if out is not None and out.kind == RunStatus.CRASH:
            from pyvmm.crash import capture  # loaded when a guest crashes

            crashes.append(capture(loop.vcpu, self.memory, self.symbols(), out.reason, out.details))
        return ([out] if out is not None else []), crashes, interrupted, signum

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return

        def watch() -> None:
            while not self._closed:
                time.sleep(INLINE_LIMIT / 4)
                inline = self._inline
                if inline is not None and time.monotonic() - inline[1] > INLINE_LIMIT:
                    inline[0].kick()

        self._watchdog = threading.Thread(target=watch, name="pyvmm-inline-watchdog", daemon=True)
        self._watchdog.start()

    def _leg(self, loops: list[VcpuLoop], deadline: float | None, python_loop: bool
             ) -> tuple[list[Outcome], list[GuestCrash], str | None, int | None]:
        """Run ``loops`` once, until the first final outcome, the deadline, a stop or a
        signal: ``(outcomes, crashes, interrupted, signal)``."""
        if self._stop.is_set():
            return [], [], None, None  # stopped before it started
        for loop in loops:
            loop.reset_kick()
        self._done.clear()
        if self._stop.is_set():  # a stop() that came while the flags were reset
            self._done.set()
        outcomes: list[Outcome] = []
        crashes: list[GuestCrash] = []
        lock = threading.Lock()

        def vcpu_thread(loop: VcpuLoop) -> None:
            try:
                out = loop.run_python() if python_loop else loop.run()
            except Exception as e:  # a VMM bug or a device handler's error
                out = Outcome(RunStatus.ERROR, loop.vcpu.id, reason=f"{type(e).__name__}: {e}",
                              details={"traceback": _traceback()})
            crash = None
            if out.kind == RunStatus.CRASH:
                from pyvmm.crash import capture

                crash = capture(loop.vcpu, self.memory, self.symbols(), out.reason, out.details)
            with lock:
                outcomes.append(out)
                if crash is not None:
                    crashes.append(crash)
            if out.kind != RunStatus.KICKED:
                self._done.set()

        threads = [threading.Thread(target=vcpu_thread, args=(lp,), name=f"vcpu{lp.vcpu.id}",
                                    daemon=True) for lp in loops]
        interrupted: str | None = None
        signum: int | None = None
        try:
            for t in threads:
                t.start()
            while not self._done.is_set():
                left = FLUSH_INTERVAL if deadline is None else min(FLUSH_INTERVAL,
                                                                   deadline - time.monotonic())
                if left <= 0:
                    break
                if self._done.wait(left):
                    break
                for loop in loops:
                    loop.request_flush()
        except KeyboardInterrupt:
            interrupted, signum = "interrupted (SIGINT)", _SIGINT
        except Interrupted as e:
            interrupted, signum = f"interrupted ({e.name})", e.signum
        finally:
            self._stop_all(loops, threads)
        return outcomes, crashes, interrupted, signum

    def _stop_all(self, loops: list[VcpuLoop], threads: list[threading.Thread]) -> None:
        """Kick until every vCPU thread has left KVM_RUN, then collect what C counted."""
        while any(t.is_alive() for t in threads):
            for loop in loops:
                loop.kick()
            for t in threads:
                t.join(0.05)
        for loop in loops:
            loop.collect()

    def _result(self, loops: list[VcpuLoop], outcomes: list[Outcome], crashes: list[GuestCrash],
                timeout: float | None, interrupted: str | None, duration: float) -> RunResult:
        final = [o for o in outcomes if o.kind not in (RunStatus.KICKED, RunStatus.SUSPEND)]
        counts: Counter[str] = Counter()
        per_vcpu = []
        hits: Counter[str] = Counter()
        for loop in loops:
            c = loop.exit_counts()
            per_vcpu.append(c)
            counts.update(c)
            hits.update(loop.fast_hits())
        res = RunResult(RunStatus.TIMEOUT, None, exit_counts=dict(counts), vcpu_exit_counts=per_vcpu,
                        fast_hits=dict(hits), kvm_runs=sum(lp.kvm_runs for lp in loops),
                        unclaimed=self.bus.unclaimed_summary(), duration=duration,
                        outcomes=outcomes)
        if final:
            first = final[0]
            res.status, res.exit_code, res.message = first.kind, first.code, first.reason
            if first.kind == RunStatus.CRASH and crashes:
                res.crash = crashes[0]
            res.assertion = first.details.get("event")
        elif interrupted:
            res.status, res.message = RunStatus.INTERRUPTED, interrupted
        elif self._stopped_by_host:
            res.status, res.message = RunStatus.STOPPED, "stopped by Machine.stop()"
        else:
            res.message = f"guest did not stop within {timeout:g} s" if timeout else "stopped"
        return res
