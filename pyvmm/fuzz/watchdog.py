"""The deadline of one fuzzing iteration: a thread that kicks the vCPU when the input ran
too long, or at once when a watched process dies (AFL's kill of the pid the forkserver
reported, see :mod:`pyvmm.fuzz.forkserver`).

Arming and disarming are attribute writes under a lock (a fraction of a microsecond):
every input pays them, so the thread is not woken per input.  It polls every
:data:`TICK` seconds, and on the watched process's pidfd, which wakes it the moment the
process is killed.
"""

from __future__ import annotations

import contextlib
import select
import threading
import time
from collections.abc import Callable

#: how often the thread looks at the deadline (the granularity of a VMM-side timeout)
TICK = 0.01


class Watchdog:
    """Calls ``kick()`` when an armed iteration passes its deadline or ``watch``-ed pid dies."""

    def __init__(self, kick: Callable[[], None]) -> None:
        self._kick = kick
        self._lock = threading.Lock()
        self._deadline: float | None = None
        self._fired = False
        self._pidfd: int | None = None
        #: which watch() the pidfd belongs to: a new decoy's pidfd often gets the number
        #: of the one just closed, and a wake-up from the old one must not count for it
        self._generation = 0
        self.died = False  #: the watched process is gone (read by the owner, reset by watch)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="pyvmm-fuzz-watchdog", daemon=True)
        self._thread.start()

    def watch(self, pidfd: int | None) -> None:
        """Watch ``pidfd`` (owned by the caller) from now on; None: none."""
        with self._lock:
            self._pidfd, self.died = pidfd, False
            self._generation += 1

    def arm(self, seconds: float | None) -> None:
        with self._lock:
            self._fired = False
            self._deadline = time.monotonic() + seconds if seconds is not None else float("inf")

    def disarm(self) -> bool:
        """End the iteration; True when the watchdog kicked it."""
        with self._lock:
            self._deadline = None
            return self._fired

    def close(self) -> None:
        self._closed = True
        self._thread.join(timeout=1)

    def _loop(self) -> None:
        poller = select.poll()
        watched: int | None = None
        generation = -1
        while not self._closed:
            with self._lock:
                pidfd = self._pidfd if not self.died else None
                now = self._generation
            if pidfd != watched or now != generation:
                if watched is not None:
                    with contextlib.suppress(KeyError):
                        poller.unregister(watched)
                if pidfd is not None:
                    poller.register(pidfd, select.POLLIN)
                watched, generation = pidfd, now
            try:
                ready = poller.poll(TICK * 1000) if watched is not None else None
            except OSError:  # the fd was closed under us: look again
                watched = None
                poller = select.poll()
                continue
            if ready is None:
                time.sleep(TICK)
            with self._lock:
                if ready and self._generation == generation and self._pidfd == watched:
                    self.died = True
                due = self._deadline is not None and (self.died or time.monotonic() >= self._deadline)
                if due and not self._fired:
                    self._fired = True
                    self._kick()
