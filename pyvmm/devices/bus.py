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
from collections.abc import Sequence
from operator import itemgetter

from pyvmm.devices.base import HOST, Device, VcpuContext, all_ones
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, Space
from pyvmm.errors import ExitStatus, GuestIoError, PyvmmError

__all__ = ["READ", "WRITE", "Action", "Bus", "BusError", "Device", "FastEntry", "GuestStop",
           "Space", "UnclaimedIoError", "all_ones"]

#: distinct unclaimed addresses tallied one by one; beyond, only a total
MAX_UNCLAIMED = 1024


#: a range's start, the key ranges are sorted by
_START = itemgetter(0)

#: each space's ranges as ``(start, end, index of the device)``, sorted, their starts and
#: :meth:`Bus.claims`; and the index of each distinct device, in order
_Layout = tuple[list[tuple[Space, list[tuple[int, int, int]], list[int],
                           tuple[tuple[int, int], ...]]], list[int]]
#: the layouts empty buses took, by the devices' ranges (:meth:`Bus.attach_devices`)
_LAYOUTS: dict[tuple[tuple[tuple[Space, int, int], ...], ...], _Layout] = {}
_LAYOUTS_MAX = 16


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
        #: every device once, in the order they came (closed in that order)
        self._attached: list[Device] = []
        self._attached_ids: set[int] = set()
        #: :meth:`claimed` per space, kept until a device is registered (every run loop
        #: asks when it is made)
        self._claims: dict[Space, tuple[tuple[int, int], ...]] = {}

    def register(self, space: Space, base: int, length: int, device: Device) -> list[FastEntry]:
        """Claim ``[base, base+length)`` for ``device``; returns its new fast entries."""
        return self.attach_all([(space, base, length, device)])

    def attach(self, device: Device) -> list[FastEntry]:
        """Claim every range the device declares (:meth:`Device.ranges`); returns its new
        fast entries."""
        return self.attach_devices((device,))

    def attach_devices(self, devices: Sequence[Device]) -> list[FastEntry]:
        """:meth:`attach` of each device, all or none: a machine's own devices at once.
        On an empty bus, the same devices' ranges (the same ports, in the same order) come
        from the first bus that took them: every machine has the same few devices, and
        checking and sorting their claims each time was a tenth of a machine's Python."""
        claims = [tuple(d.ranges()) for d in devices]
        key = (*claims,)
        layout, empty, keep = None, not self._attached, True
        if empty:
            try:
                layout = _LAYOUTS.get(key)
            except TypeError:  # a device's ranges as lists, say: not kept
                keep = False
        if layout is not None:
            return self._adopt(layout, devices)
        new = self.attach_all([(space, base, length, d)
                               for d, ranges in zip(devices, claims, strict=True)
                               for space, base, length in ranges])
        if empty and keep and len(_LAYOUTS) < _LAYOUTS_MAX:
            # the devices by their first place in ``devices``; a device that claims no
            # range is not on the bus (as attach leaves it), here or on a bus taking this
            index = {id(d): i for i, d in reversed(list(enumerate(devices)))}
            _LAYOUTS[key] = ([(space, [(s, e, index[id(d)]) for s, e, d in ranges],
                               self._starts[space], self.claims(space))
                              for space, ranges in self._ranges.items() if ranges],
                             [index[id(d)] for d in self._attached])
        return new

    def _adopt(self, layout: _Layout, devices: Sequence[Device]) -> list[FastEntry]:
        """:meth:`attach_devices` on an empty bus from what an earlier bus took of the same
        ranges (``_LAYOUTS``): its sorted ranges, with these devices in them."""
        spaces, distinct = layout
        with self.lock:
            for space, rows, starts, claims in spaces:
                self._ranges[space] = [(s, e, devices[i]) for s, e, i in rows]
                self._starts[space] = [*starts]
                self._claims[space] = claims
            new: list[FastEntry] = []
            for i in distinct:
                d = devices[i]
                self._attached_ids.add(id(d))
                self._attached.append(d)
                for fe in d.fast_entries():
                    if fe not in new:  # (devices may share an entry: listed once)
                        new.append(fe)
            self.fast_entries += new
            self._devices = None
        return new

    def attach_all(self, claims: Sequence[tuple[Space, int, int, Device]]) -> list[FastEntry]:
        """Claim each ``(space, base, length, device)``, all or none (every check before
        any change); returns the devices' new fast entries.  One sort and one pass over
        each space's ranges (plain loops: machines are made by the thousand, each with the
        same few devices, and this was a tenth of a machine's Python)."""
        mine: dict[Space, list[tuple[int, int, Device]]] = {}
        for space, base, length, device in claims:
            if length <= 0:
                raise BusError(f"{device.name}: empty range at {base:#x}")
            if base < 0 or base + length > (0x10000 if space is Space.PIO else 1 << 52):
                raise BusError(f"{device.name}: range {base:#x}+{length:#x} outside the "
                               f"{space.name} space")
            if space in mine:
                mine[space].append((base, base + length, device))
            else:
                mine[space] = [(base, base + length, device)]
        with self.lock:
            merged = {}
            for space, add in mine.items():
                ranges = self._ranges[space] + add
                ranges.sort(key=_START)  # ties would compare devices: an overlap, below
                reach = ranges[0]  # the range reaching furthest so far
                for r in ranges:  # sorted by start: any overlap shows against ``reach``
                    if r[0] < reach[1] and r is not reach:
                        # the one claimed later is the newcomer (as one by one)
                        new_r, old_r = (r, reach) if r in add and (
                            reach not in add or add.index(r) > add.index(reach)) else (reach, r)
                        raise BusError(f"{new_r[2].name}: {space.name} {new_r[0]:#x}-"
                                       f"{new_r[1] - 1:#x} overlaps {old_r[2].name} at "
                                       f"{old_r[0]:#x}-{old_r[1] - 1:#x}")
                    if r[1] > reach[1]:
                        reach = r
                merged[space] = ranges
            new: list[FastEntry] = []
            seen = set()
            for _, _, _, device in claims:
                if id(device) not in seen:
                    seen.add(id(device))
                    for fe in device.fast_entries():
                        if fe not in self.fast_entries and fe not in new:
                            new.append(fe)
                    if id(device) not in self._attached_ids:
                        self._attached_ids.add(id(device))
                        self._attached.append(device)
            for space, ranges in merged.items():
                self._ranges[space] = ranges
                self._starts[space] = [r[0] for r in ranges]
            self.fast_entries += new
            self._devices = None
            self._claims = {}
        return new

    def devices(self) -> list[tuple[str, Device]]:
        """Every device once, as ``(key, device)`` sorted by key; the key
        (``name@pio:0x3f8``) names it in snapshots.  Kept until a device is registered."""
        if self._devices is not None:
            return self._devices
        out: dict[int, tuple[str, Device]] = {}
        for space, ranges in self._ranges.items():
            where = space.name.lower()
            for start, _, d in ranges:  # sorted by start (attach_all keeps them so)
                if id(d) not in out:
                    out[id(d)] = (f"{d.name}@{where}:{start:#x}", d)
        self._devices = sorted(out.values(), key=lambda kd: kd[0])
        return self._devices

    def claimed(self, space: Space) -> list[tuple[int, int]]:
        """``[(base, length)]`` of every registered range in ``space``, by base."""
        return list(self.claims(space))

    def claims(self, space: Space) -> tuple[tuple[int, int], ...]:
        """:meth:`claimed` as a tuple, the same one until a device is registered: every run
        loop asks when it is made, and the C loop's port bitmaps are kept per tuple."""
        kept = self._claims  # a registration meanwhile replaces it: this one goes stale
        claims = kept.get(space)
        if claims is None:
            claims = kept[space] = tuple((s, e - s) for s, e, _ in self._ranges[space])
        return claims

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
        for dev in self._attached:
            dev.close()

    def unclaimed_summary(self) -> list[str]:
        out = [f"{'port' if s is Space.PIO else 'mmio'} {a:#x}: {n}"
               for (s, a), n in sorted(self.unclaimed.items())]
        if self.unclaimed_other:
            out.append(f"other addresses: {self.unclaimed_other}")
        return out
