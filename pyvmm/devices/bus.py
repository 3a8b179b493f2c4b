"""The I/O bus: port and MMIO ranges mapped to devices.

Devices (:class:`~pyvmm.devices.base.Device`) answer ``read(addr, size, ctx)`` and
``write(addr, size, value, ctx)``, where ``addr`` is the absolute port or guest-physical
address.  Overlapping registrations are refused.  Accesses nobody claims are ignored
(reads give all-ones) and counted, as on real hardware; with ``strict=True`` they raise
:class:`UnclaimedIoError` instead.  The tally of unclaimed addresses is bounded: a guest
that touches a million distinct addresses costs the VMM a fixed amount of memory.
"""

from __future__ import annotations

import bisect
import threading
from collections import Counter

from pyvmm.devices.base import HOST, Device, VcpuContext, all_ones
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, Space
from pyvmm.errors import ExitStatus, GuestIoError, PyvmmError

__all__ = ["READ", "WRITE", "Action", "Bus", "BusError", "Device", "FastEntry", "GuestStop",
           "Space", "UnclaimedIoError", "all_ones"]

#: distinct unclaimed addresses tallied one by one; beyond, only a total
MAX_UNCLAIMED = 1024


class BusError(PyvmmError, ValueError):
    """A device registration that overlaps another device or has an empty range (a bug in
    the code setting the machine up, not the guest's doing)."""

    status = ExitStatus.VMM_ERROR


class UnclaimedIoError(GuestIoError):
    """A strict bus saw an access no device claims."""

    def __init__(self, space: Space, addr: int, size: int, is_write: bool) -> None:
        what = "port" if space is Space.PIO else "MMIO address"
        op = "write to" if is_write else "read from"
        super().__init__(f"unclaimed {size}-byte {op} {what} {addr:#x} (--strict-io)")
        self.space, self.addr, self.size, self.is_write = space, addr, size, is_write


class GuestStop(Exception):
    """Raised by a device to end the run: ``reason`` names why (debug-exit, shutdown,
    done, assert, ...), ``code`` is the guest's value; ``event`` the guest's message."""

    def __init__(self, code: int, reason: str = "debug-exit", event: object = None) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason
        self.event = event


class Bus:
    """Thread-safe registry and dispatcher (vCPU threads dispatch concurrently; device
    handlers run one at a time under :attr:`lock`)."""

    def __init__(self, strict: bool = False) -> None:
        self.strict = strict
        self._starts: dict[Space, list[int]] = {Space.PIO: [], Space.MMIO: []}
        self._ranges: dict[Space, list[tuple[int, int, Device]]] = {Space.PIO: [], Space.MMIO: []}
        self.unclaimed: Counter[tuple[Space, int]] = Counter()
        #: unclaimed accesses to addresses beyond the first MAX_UNCLAIMED distinct ones
        self.unclaimed_other = 0
        self.fast_entries: list[FastEntry] = []
        self.lock = threading.RLock()
        self._devices: list[tuple[str, Device]] | None = None

    def register(self, space: Space, base: int, length: int, device: Device) -> list[FastEntry]:
        """Claim ``[base, base+length)`` for ``device``; returns its new fast entries."""
        if length <= 0:
            raise BusError(f"{device.name}: empty range at {base:#x}")
        limit = 0x10000 if space is Space.PIO else 1 << 52
        if base < 0 or base + length > limit:
            raise BusError(f"{device.name}: range {base:#x}+{length:#x} outside the {space.name} space")
        with self.lock:
            ranges = self._ranges[space]
            for s, e, d in ranges:
                if base < e and s < base + length:
                    raise BusError(f"{device.name}: {space.name} {base:#x}-{base + length - 1:#x} "
                                   f"overlaps {d.name} at {s:#x}-{e - 1:#x}")
            i = bisect.bisect(self._starts[space], base)
            self._starts[space].insert(i, base)
            ranges.insert(i, (base, base + length, device))
            new = [fe for fe in device.fast_entries() if fe not in self.fast_entries]
            self.fast_entries += new
            self._devices = None
        return new

    def attach(self, device: Device) -> list[FastEntry]:
        """Claim every range the device declares (:meth:`Device.ranges`); returns its new
        fast entries."""
        new: list[FastEntry] = []
        for space, base, length in device.ranges():
            new += self.register(space, base, length, device)
        return new

    def devices(self) -> list[tuple[str, Device]]:
        """Every device once, as ``(key, device)`` sorted by key; the key
        (``name@pio:0x3f8``) names it in snapshots.  Kept until a device is registered."""
        if self._devices is not None:
            return self._devices
        out: dict[int, tuple[str, Device]] = {}
        for space, ranges in self._ranges.items():
            where = space.name.lower()
            for start, _, d in ranges:  # sorted by start: register() inserts them so
                if id(d) not in out:
                    out[id(d)] = (f"{d.name}@{where}:{start:#x}", d)
        self._devices = sorted(out.values(), key=lambda kd: kd[0])
        return self._devices

    def claimed(self, space: Space) -> list[tuple[int, int]]:
        """``[(base, length)]`` of every registered range in ``space``."""
        return [(s, e - s) for s, e, _ in self._ranges[space]]

    def count_unclaimed(self, space: Space, addr: int, n: int) -> None:
        """Add ``n`` accesses nobody claims (counted by the C loop or here)."""
        with self.lock:
            key = (space, addr)
            if key in self.unclaimed or len(self.unclaimed) < MAX_UNCLAIMED:
                self.unclaimed[key] += n
            else:
                self.unclaimed_other += n

    def lookup(self, space: Space, addr: int, size: int = 1) -> tuple[int, Device] | None:
        """``(base, device)`` of the range that holds ``[addr, addr+size)``, or None."""
        i = bisect.bisect_right(self._starts[space], addr) - 1
        if i >= 0:
            s, e, d = self._ranges[space][i]
            if s <= addr and addr + size <= e:
                return s, d
        return None

    def find(self, space: Space, addr: int, size: int = 1) -> Device | None:
        hit = self.lookup(space, addr, size)
        return None if hit is None else hit[1]

    def read(self, space: Space, addr: int, size: int, ctx: VcpuContext = HOST) -> int:
        """What the device at ``addr`` answers; it is handed the offset into its range."""
        hit = self.lookup(space, addr, size)
        if hit is None:
            self._unclaimed(space, addr, size, False)
            return all_ones(size)
        with self.lock:
            return hit[1].read(addr - hit[0], size, ctx) & all_ones(size)

    def write(self, space: Space, addr: int, size: int, value: int, ctx: VcpuContext = HOST) -> None:
        """Hand a write to the device at ``addr``, at the offset into its range."""
        hit = self.lookup(space, addr, size)
        if hit is None:
            self._unclaimed(space, addr, size, True)
            return
        with self.lock:
            hit[1].write(addr - hit[0], size, value, ctx)

    def _unclaimed(self, space: Space, addr: int, size: int, is_write: bool) -> None:
        if self.strict:
            raise UnclaimedIoError(space, addr, size, is_write)
        self.count_unclaimed(space, addr, 1)

    def close(self) -> None:
        """Close every device once (the machine is going away)."""
        seen: set[int] = set()
        for space in self._ranges.values():
            for _, _, dev in space:
                if id(dev) not in seen:
                    seen.add(id(dev))
                    dev.close()

    def unclaimed_summary(self) -> list[str]:
        out = [f"{'port' if s is Space.PIO else 'mmio'} {a:#x}: {n}"
               for (s, a), n in sorted(self.unclaimed.items())]
        if self.unclaimed_other:
            out.append(f"other addresses: {self.unclaimed_other}")
        return out
