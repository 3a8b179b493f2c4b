"""Bounded memory of what a guest said: its serial output and its protocol events.

A guest can print gigabytes or send millions of GUEST_SYNCs; the VMM must not keep them
all.  :class:`SerialLog` streams every byte to its sink (the CLI's stdout) and keeps only
the last ``limit`` bytes for ``RunResult.serial``; :class:`EventLog` keeps the last
``limit`` events.  Both count what they dropped.  :class:`HistoryLimits` is the API's knob
(``Machine(history=HistoryLimits(serial=..., events=...))``).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

from pyvmm.record import FrozenRecord

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.devices.ucall import GuestEvent


class HistoryLimits(FrozenRecord):
    """How much of a run the API keeps: ``serial`` bytes of output, ``events`` guest events
    (the CLI streams output and keeps none)."""

    _fields = ("serial", "events")
    serial: int
    events: int

    def __init__(self, serial: int = 1 << 20, events: int = 10_000) -> None:
        self._set(serial=serial, events=events)


class SerialLog:
    """The guest's console output: streamed to ``sink``, the tail kept."""

    def __init__(self, limit: int, sink: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.sink = sink
        self.total = 0
        self._tail = bytearray()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self._lock:
            self.total += len(data)
            if self.limit:
                self._tail += data[-self.limit:]
                if len(self._tail) > 2 * self.limit:  # trim in batches: amortised O(1)
                    del self._tail[:-self.limit]
        if self.sink is not None:
            self.sink(data)

    def since(self, mark: int) -> tuple[bytes, int]:
        """``(bytes, dropped)``: the output since ``total`` was ``mark``, as much as is kept."""
        with self._lock:
            want = self.total - mark
            keep = min(want, len(self._tail), self.limit)
            return bytes(self._tail[len(self._tail) - keep:]), want - keep


class EventLog:
    """Guest events: the last ``limit`` kept (for results) and a reader cursor for
    :meth:`next` (``Machine.wait_event``)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._events: deque[tuple[int, GuestEvent]] = deque(maxlen=max(limit, 1))
        self.total = 0
        self._read = 0
        self._cond = threading.Condition()

    def append(self, event: GuestEvent) -> None:
        with self._cond:
            if self.limit:
                self._events.append((self.total, event))
            self.total += 1
            self._cond.notify_all()

    def since(self, mark: int) -> tuple[list[GuestEvent], int]:
        """``(events, dropped)`` since ``total`` was ``mark``."""
        with self._cond:
            kept = [e for seq, e in self._events if seq >= mark] if self.limit else []
            return kept, self.total - mark - len(kept)

    def skip_to_end(self) -> None:
        with self._cond:
            self._read = self.total

    def next(self, timeout: float | None) -> GuestEvent | None:
        """The next event after the last one returned (waiting up to ``timeout``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self.total > self._read, timeout):
                return None
            for seq, e in self._events:
                if seq >= self._read:
                    self._read = seq + 1
                    return e
            self._read = self.total  # the ones not read yet were dropped
            return None
