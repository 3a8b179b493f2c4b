"""A machine's run on a background thread (``Machine.start``/``join``) and reading its
guest events as they come (``next_event``/``wait_event``).

The thread runs ``Machine.run`` unchanged; what it returns or raises is kept for
:meth:`BackgroundRun.join`, never printed as a thread traceback.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from pyvmm.config import check_timeout
from pyvmm.devices.ucall import GuestEvent
from pyvmm.errors import MachineStateError
from pyvmm.vstate.history import EventLog
from pyvmm.vstate.result import RunResult

#: how often next_event() looks whether a started run has ended
EVENT_POLL = 0.05


class BackgroundRun:
    """At most one run at a time on a thread of its own, over one machine's event log."""

    def __init__(self, events: EventLog) -> None:
        self.events = events
        self.thread: threading.Thread | None = None
        self._result: RunResult | None = None
        self._error: BaseException | None = None

    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def on_thread(self) -> bool:
        """Whether the caller is the background run's own thread."""
        return threading.current_thread() is self.thread

    def start(self, run: Callable[[], RunResult]) -> None:
        """``run()`` on a new thread; events from here on are what next_event() reads."""
        if self.running():
            raise MachineStateError("the machine is already running")
        self._result = None
        self._error = None
        self.events.skip_to_end()

        def body() -> None:
            try:
                self._result = run()
            except BaseException as e:  # handed to join(), never a thread traceback
                self._error = e

        self.thread = threading.Thread(target=body, name="pyvmm-run", daemon=True)
        self.thread.start()

    def join(self, timeout: float | None = None) -> RunResult:
        if self.thread is None:
            raise MachineStateError("join() waits for a run started with start(); none was started")
        self.thread.join(check_timeout(timeout))
        if self.thread.is_alive():
            raise TimeoutError("the run is still going; call stop() first")
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._result is None:
            raise MachineStateError("the background run failed before it produced a result")
        return self._result

    def next_event(self, timeout: float | None = None) -> GuestEvent | None:
        timeout = check_timeout(timeout)
        if self.thread is None:
            raise MachineStateError("next_event()/wait_event() read the events of a run started "
                                    "with start(); call start() first (run() returns its events "
                                    "in RunResult.events)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            running = self.thread.is_alive()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # short waits while the run goes on, so that its end is seen; none after it
            wait = 0.0 if not running else EVENT_POLL if left is None else min(left, EVENT_POLL)
            ev = self.events.next(wait)
            if ev is not None or not running or (deadline is not None and
                                                 time.monotonic() >= deadline):
                return ev

    def wait_event(self, kind: str | None = None, stage: int | None = None,
                   timeout: float | None = None) -> GuestEvent | None:
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.next_event(left)
            if ev is None:
                return None
            if (kind is None or ev.kind == kind) and (stage is None or ev.stage == stage):
                return ev

    def close(self, stop: Callable[[], None]) -> None:
        """Stop a run still going (``stop``) and wait for its thread."""
        if self.running():
            stop()
            assert self.thread is not None
            self.thread.join()
