"""Where a machine's guest events go (``Machine.on_event``, ``on_sync``,
``run_to_sync``): into the machine's bounded history, to every listener, and a guest's
``print`` to the serial log as a line."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

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


@contextlib.contextmanager
def stop_at_sync(ucall: UcallDevice, stage: int, stop: Callable[[], None]) -> Iterator[None]:
    """While in the block, ``stop`` is called at the first GUEST_SYNC of ``stage`` (a sync
    handler on ``ucall``, removed at the block's end)."""
    reached: list[bool] = []

    def stop_at(ev: GuestEvent) -> None:
        if ev.stage == stage and not reached:
            reached.append(True)
            stop()

    ucall.sync_handlers.append(stop_at)
    try:
        yield
    finally:
        ucall.sync_handlers.remove(stop_at)
