"""The I/O bus: port and MMIO ranges mapped to device handlers.

Devices implement ``read(addr, size) -> int`` and ``write(addr, size, value)``, where
``addr`` is the absolute port or guest-physical address.  Overlapping registrations are
refused.  Accesses nobody claims are ignored (reads give all-ones) and counted, as on
real hardware; with ``strict=True`` they raise :class:`UnclaimedIoError` instead.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol

from pyvmm._native import lib


def all_ones(size: int) -> int:
    """What an access of ``size`` bytes to nothing reads: every bit set."""
    return (1 << (8 * size)) - 1


class Space(IntEnum):
    PIO = lib.PYVMM_SPACE_PIO
    MMIO = lib.PYVMM_SPACE_MMIO


class Action(IntEnum):
    """What the C run loop does for a fast-table entry (see cbindings/runloop.h)."""

    SINK = lib.PYVMM_ACT_SINK
    BUFFER = lib.PYVMM_ACT_BUFFER
    STOP = lib.PYVMM_ACT_STOP
    COUNTER = lib.PYVMM_ACT_COUNTER


READ = lib.PYVMM_DIR_READ
WRITE = lib.PYVMM_DIR_WRITE


@dataclass
class FastEntry:
    """A request to answer some exits in C.  ``owner`` receives buffered bytes (BUFFER)
    or the stop value (STOP) through :meth:`Device.fast_event`."""

    space: Space
    base: int
    length: int
    dirs: int
    action: Action
    owner: Device
    read_value: int = 0
    enabled: bool = True


class Device(Protocol):
    name: str

    def read(self, addr: int, size: int) -> int: ...

    def write(self, addr: int, size: int, value: int) -> None: ...


class BusError(ValueError):
    """A registration that overlaps another device or has an empty range."""


class UnclaimedIoError(RuntimeError):
    """A strict bus saw an access no device claims."""

    def __init__(self, space: Space, addr: int, size: int, is_write: bool) -> None:
        what = "port" if space is Space.PIO else "MMIO address"
        op = "write to" if is_write else "read from"
        super().__init__(f"unclaimed {size}-byte {op} {what} {addr:#x} (--strict-io)")
        self.space, self.addr, self.size, self.is_write = space, addr, size, is_write


class GuestStop(Exception):
    """Raised by a device write to end the run with ``code`` (debug-exit, shutdown)."""

    def __init__(self, code: int, reason: str = "debug-exit") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason


class Bus:
    """Thread-safe registry and dispatcher (vCPU threads dispatch concurrently)."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._starts: dict[Space, list[int]] = {Space.PIO: [], Space.MMIO: []}
        self._ranges: dict[Space, list[tuple[int, int, Device]]] = {Space.PIO: [], Space.MMIO: []}
        self.unclaimed: Counter[tuple[Space, int]] = Counter()
        self.fast_entries: list[FastEntry] = []
        #: MSR index -> (read() -> value, write(value)); reached through userspace MSR exits
        self.msr_handlers: dict[int, tuple[Callable[[], int] | None,
                                           Callable[[int], None] | None]] = {}
        self.lock = threading.RLock()

    def register(self, space: Space, base: int, length: int, device: Device) -> None:
        if length <= 0:
            raise BusError(f"{device.name}: empty range at {base:#x}")
        limit = 0x10000 if space is Space.PIO else 1 << 52
        if base < 0 or base + length > limit:
            raise BusError(f"{device.name}: range {base:#x}+{length:#x} outside the {space.name} space")
        ranges = self._ranges[space]
        for s, e, d in ranges:
            if base < e and s < base + length:
                raise BusError(f"{device.name}: {space.name} {base:#x}-{base + length - 1:#x} "
                               f"overlaps {d.name} at {s:#x}-{e - 1:#x}")
        i = bisect.bisect(self._starts[space], base)
        self._starts[space].insert(i, base)
        ranges.insert(i, (base, base + length, device))
        for fe in getattr(device, "fast_entries", lambda: [])():
            self.fast_entries.append(fe)

    def claimed(self, space: Space) -> list[tuple[int, int]]:
        """``[(base, length)]`` of every registered range in ``space``."""
        return [(s, e - s) for s, e, _ in self._ranges[space]]

    def count_unclaimed(self, space: Space, addr: int, n: int) -> None:
        """Add ``n`` accesses the C loop answered for nobody (lax mode)."""
        with self.lock:
            self.unclaimed[(space, addr)] += n

    def find(self, space: Space, addr: int, size: int = 1) -> Device | None:
        i = bisect.bisect_right(self._starts[space], addr) - 1
        if i >= 0:
            s, e, d = self._ranges[space][i]
            if s <= addr and addr + size <= e:
                return d
        return None

    def read(self, space: Space, addr: int, size: int) -> int:
        dev = self.find(space, addr, size)
        if dev is None:
            self._unclaimed(space, addr, size, False)
            return all_ones(size)
        with self.lock:
            return dev.read(addr, size) & (all_ones(size))

    def write(self, space: Space, addr: int, size: int, value: int) -> None:
        dev = self.find(space, addr, size)
        if dev is None:
            self._unclaimed(space, addr, size, True)
            return
        with self.lock:
            dev.write(addr, size, value)

    def _unclaimed(self, space: Space, addr: int, size: int, is_write: bool) -> None:
        if self.strict:
            raise UnclaimedIoError(space, addr, size, is_write)
        with self.lock:
            self.unclaimed[(space, addr)] += 1

    def unclaimed_summary(self) -> list[str]:
        return [f"{'port' if s is Space.PIO else 'mmio'} {a:#x}: {n}"
                for (s, a), n in sorted(self.unclaimed.items())]
