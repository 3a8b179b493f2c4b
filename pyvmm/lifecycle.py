"""Where a machine is in its life, and the one-line errors for using it out of turn:
closed (every fd gone), running (a ``start``-ed run goes on), no guest loaded, or the
guest already ended.  ``Machine`` asks here before each method that needs it."""

from __future__ import annotations

from pyvmm.background import BackgroundRun
from pyvmm.errors import GuestExitedError, GuestImageError, MachineClosedError, MachineStateError
from pyvmm.vstate.result import FINAL, RunResult, RunStatus


class Lifecycle:
    def __init__(self, bg: BackgroundRun) -> None:
        self.bg = bg
        self.closed = False
        self.loaded = False
        #: the result the guest ended with (None: it can run)
        self.ended: RunResult | None = None

    def check_open(self, what: str) -> None:
        if self.closed:
            raise MachineClosedError(f"{what}() on a closed Machine: its VM, fds and memory are "
                                     "gone; make a new Machine")

    def check_stopped(self, what: str, method: str = "") -> None:
        """Open, and no run going on (``what`` names the action, ``method`` the call)."""
        self.check_open(method or what)
        if self.bg.running():
            raise MachineStateError(f"cannot {what} while the machine runs; stop() and join() first")

    def check_runnable(self, what: str) -> None:
        """A run may start: none going on (but a ``start``-ed run's own thread runs), a guest
        loaded that has not ended."""
        if what == "start" and self.bg.running():
            raise MachineStateError("the machine is already running")
        if not self.bg.on_thread() and self.bg.running():
            raise MachineStateError(f"cannot {what} while the machine runs; stop() and join() first")
        if not self.loaded:
            raise GuestImageError("no guest loaded")
        if self.ended is not None:
            raise GuestExitedError(f"the guest has already ended ({self.ended.status}: "
                                   f"{self.ended.message}); make a new Machine to run it again")

    def ended_status(self) -> RunStatus | None:
        """How the guest ended (None: it has not)."""
        return self.ended.status if self.ended is not None else None

    def ran(self, result: RunResult) -> None:
        """Note a run's result: a final one ends the guest."""
        if result.status in FINAL:
            self.ended = result
