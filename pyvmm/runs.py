"""A machine's runs as a service (``Machine.run``/``start``/``stop``/``join``): the
:class:`~pyvmm.vstate.runner.Runner` over one loop per vCPU, a ``start``-ed run on a thread
(:mod:`pyvmm.background`), and the rules between them (:mod:`pyvmm.lifecycle`), checked
before each run and noted after it.

The loops are made on first use, not with the machine: a machine that is only loaded,
snapshotted or inspected never builds them, and a clone gets them after its state is set.
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from pyvmm.background import BackgroundRun
from pyvmm.config import check_timeout
from pyvmm.devices.fastpath import FastEntry
from pyvmm.devices.ucall import GuestEvent
from pyvmm.errors import MachineClosedError
from pyvmm.lifecycle import Lifecycle
from pyvmm.tracing import Tracing
from pyvmm.vstate.history import EventLog
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import RunResult
from pyvmm.vstate.runner import Runner

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.vstate.trace import ExitTrace


def _closed() -> Runner:
    raise MachineClosedError("the machine is closed: it runs no more")


class Runs:
    """The runs of one machine; ``new_runner()`` builds its Runner (and loops) on first use."""

    def __init__(self, events: EventLog, tracing: Tracing, new_runner: Callable[[], Runner]) -> None:
        self.bg = BackgroundRun(events)
        self.life = Lifecycle(self.bg)
        self.tracing = tracing
        self._new_runner = new_runner
        self._runner: Runner | None = None
        #: called after a snapshot restore (the debugger forgets stops and steps)
        self.on_restore: list[Callable[[], None]] = []

    @property
    def loops(self) -> list[VcpuLoop]:
        """One loop per vCPU, BSP first (none before the first run or after close)."""
        return self._runner.loops if self._runner is not None else []

    def runner(self) -> Runner:
        if self._runner is None:
            self._runner = self._new_runner()
        return self._runner

    def next_event(self, timeout: float | None) -> GuestEvent | None:
        self.life.check_open("next_event")
        return self.bg.next_event(timeout)

    def enable_trace(self, on_event: Callable[[Callable[[GuestEvent], None]], None],
                     capacity: int | None, events: int | None) -> ExitTrace:
        """The machine's exit trace, fed by every loop from now on (:mod:`pyvmm.tracing`)."""
        self.life.check_open("enable_trace")
        return self.tracing.enable(self.runner().loops, on_event, capacity, events)

    def add_fast_entries(self, new: Collection[FastEntry]) -> None:
        """A device added after the loops exist: its fast entries reach every C table."""
        for loop in self.loops:
            for fe in new:
                loop.add_fast_entry(fe)
            loop.sync_claims()

    def sync_fast(self, fe: FastEntry, only_if_changed: bool = False) -> None:
        """A device changed a fast entry's answer: every C table takes it."""
        for loop in self.loops:
            loop.sync_fast_entry(fe, only_if_changed)

    def restored(self, fast_entries: Collection[FastEntry]) -> None:
        """After a snapshot restore: devices' answers may have changed, and the guest can
        run again even if it had ended."""
        for fe in fast_entries:
            self.sync_fast(fe, only_if_changed=True)
        self.life.ended, self.life.loaded = None, True
        for reset in self.on_restore:
            reset()

    def run(self, timeout: float | None, python_loop: bool, vcpus: Collection[int] | None,
            stats: bool) -> RunResult:
        """One run to its end (a final outcome, the timeout or a stop); a final outcome
        ends the guest, and a later run is refused (GuestExitedError)."""
        self.life.check_open("run")
        timeout = check_timeout(timeout)
        self.life.check_runnable("run")
        result = self.runner().run(timeout, python_loop, vcpus=vcpus, collect_stats=stats)
        self.tracing.collect(self.loops, result)
        self.life.ran(result)
        return result

    def start(self, timeout: float | None, python_loop: bool) -> None:
        """:meth:`run` on a thread; refused, here on the caller's thread, as :meth:`run` would be."""
        self.life.check_open("start")
        timeout = check_timeout(timeout)
        self.life.check_runnable("start")
        self.runner()
        self.bg.start(lambda: self.run(timeout, python_loop, None, True))

    def stop(self) -> None:
        if self._runner is not None:
            self._runner.stop()

    def close(self) -> None:
        """Stop a background run and close the loops (their C state and trace rings)."""
        self.bg.close(self.stop)
        if self._runner is not None:
            self._runner.close()
            self._runner = None
        # the machine's bound method was the one way back to it: without it a closed
        # machine goes when its last reference does, not at the next cycle collection
        self._new_runner = _closed
