"""Where a machine's guest events go (``Machine.on_event``, ``on_sync``,
``run_to_sync``): into the machine's bounded history, to every listener, and a guest's
``print`` to the serial log as a line."""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.devices.ucall import GuestEvent, UcallDevice
from pyvmm.vstate.history import EventLog, HistoryLimits, SerialLog


class EventHub:
    """A machine's event log and serial log (bounded by ``limits``; ``serial`` also gets
    guest output as it comes), and the listeners every event goes to."""

    def __init__(self, limits: HistoryLimits, serial: Callable[[bytes], None] | None) -> None:
        self.events = EventLog(limits.events)
        self.serial = SerialLog(limits.serial, serial)
        #: called for every event, on the vCPU's thread, before sync handlers run
        self.listeners: list[Callable[[GuestEvent], None]] = []

    def emit(self, event: GuestEvent) -> None:
        self.events.append(event)
        for listener in self.listeners:
            listener(event)
        if event.kind == "print":
            self.serial.write(event.text.encode() + (b"" if event.text.endswith("\n") else b"\n"))


class stop_at_sync:  # lower case: it was (and is used as) a function
    """While in the block, ``stop`` is called at the first GUEST_SYNC of ``stage`` (a sync
    handler on ``ucall``, removed at the block's end).  A class, not a
    contextlib.contextmanager: contextlib is an import the run path does without."""

    def __init__(self, ucall: UcallDevice, stage: int, stop: Callable[[], None]) -> None:
        self.ucall, self.stage, self.stop = ucall, stage, stop
        self.reached = False

    def _stop_at(self, ev: GuestEvent) -> None:
        if ev.stage == self.stage and not self.reached:
            self.reached = True
            self.stop()

    def __enter__(self) -> None:
        self.ucall.sync_handlers.append(self._stop_at)

    def __exit__(self, *exc: object) -> None:
        self.ucall.sync_handlers.remove(self._stop_at)
