"""Guest RAM: host mappings registered as memslots, with bounds-checked access.

Every access the VMM makes on the guest's behalf goes through :meth:`GuestMemory.read`,
:meth:`GuestMemory.write` or :meth:`GuestMemory.view`, which refuse any range not wholly
inside one RAM region.  Guest-supplied addresses are untrusted: an address outside RAM is
a :class:`GuestMemoryError`, never an out-of-bounds host access.

Host mappings are never unmapped while the machine lives (only in :meth:`close`): vCPU
threads read guest memory concurrently (the test protocol, crash reports), so a region
that is removed keeps its (emptied) mapping until the end, and pc-testdev's "flush page"
zaps host PTEs instead of changing protections.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable

from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.hostmem import PAGE_SIZE, HostMapping
from pyvmm.kvm.vm import MEM_LOG_DIRTY_PAGES, MEM_READONLY, Vm
from pyvmm.record import Record

__all__ = ["PAGE_SIZE", "GuestMemory", "GuestMemoryError", "MemoryRegion"]

_U = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


def _gpa(region: MemoryRegion) -> int:
    return region.gpa


class MemoryRegion(Record):
    """One memslot: ``size`` bytes of host memory at guest-physical ``gpa``."""

    _fields = ("slot", "gpa", "size", "readonly", "log_dirty", "name", "mapping")
    _no_repr = ("mapping",)

    def __init__(self, slot: int, gpa: int, size: int, readonly: bool = False,
                 log_dirty: bool = False, name: str = "ram",
                 mapping: HostMapping | None = None) -> None:
        self.slot = slot
        self.gpa = gpa
        self.size = size
        self.readonly = readonly
        self.log_dirty = log_dirty
        self.name = name
        self.mapping = mapping

    @property
    def end(self) -> int:
        return self.gpa + self.size

    def contains(self, gpa: int, n: int = 1) -> bool:
        return n >= 0 and self.gpa <= gpa and gpa + n <= self.end

    @property
    def _map(self) -> HostMapping:
        if self.mapping is None:
            raise GuestMemoryError(f"region {self.name} is closed")
        return self.mapping


class GuestMemory:
    """The VM's RAM regions.  Owns their mappings; :meth:`close` unmaps them."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.regions: list[MemoryRegion] = []
        self._retired: list[HostMapping] = []
        self._next_slot = 0
        self._lock = threading.Lock()
        #: pages the VMM wrote since dirty tracking started (None: not tracking)
        self._vmm_written: set[int] | None = None
        #: the snapshot whose RAM the tracking counts from (pyvmm.snapshot)
        self.dirty_base: object | None = None

    def add_ram(self, gpa: int, size: int, *, readonly: bool = False, log_dirty: bool = False,
                name: str = "ram", hugepages: bool = False,
                file: tuple[int, int] | None = None) -> MemoryRegion:
        """Map ``size`` bytes of fresh zeroed memory (a memfd's) at ``gpa`` as a new memslot (or,
        with ``file=(fd, offset)``, that part of a file copy-on-write).

        Read-only slots make guest writes exit as KVM_EXIT_MMIO (and be dropped); dirty
        logging lets :meth:`dirty_pages` report what the guest wrote.
        """
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0 or gpa < 0:
            raise GuestMemoryError(f"region {name} at {gpa:#x}+{size:#x} is not page-aligned")
        with self._lock:
            for r in self.regions:
                if gpa < r.end and r.gpa < gpa + size:
                    raise GuestMemoryError(f"region {name} at {gpa:#x}+{size:#x} overlaps {r.name}")
            slot = self._next_slot
            flags = (MEM_READONLY if readonly else 0) | (MEM_LOG_DIRTY_PAGES if log_dirty else 0)
            if file is None and not hugepages:  # fresh RAM and its memslot: one native call
                # (a closed VM's fd is -1: the ioctl's EBADF says so)
                mapping = HostMapping(size, what=name, slot=(self.vm.fd, slot, gpa, flags))
            else:
                mapping = HostMapping(size, hugepages=hugepages, what=name, file=file)
                try:
                    self.vm.set_user_memory_region(slot, gpa, size, mapping.address, flags)
                except BaseException:
                    mapping.close()
                    raise
            return self._add_region(MemoryRegion(slot, gpa, size, readonly, log_dirty, name,
                                                 mapping))

    def adopt_ram(self, gpa: int, size: int, mapping: HostMapping, *, name: str = "ram"
                  ) -> MemoryRegion:
        """Fresh RAM a native call already mapped and registered as the next memslot
        (``pyvmm_machine_create``, with the VM): the region :meth:`add_ram` would have made."""
        with self._lock:
            return self._add_region(MemoryRegion(self._next_slot, gpa, size, False, False, name,
                                                 mapping))

    def _add_region(self, region: MemoryRegion) -> MemoryRegion:
        self._next_slot += 1
        # a new list, never one changed in place: readers on other threads iterate it
        self.regions = sorted([*self.regions, region], key=_gpa)
        return region

    def remove(self, region: MemoryRegion) -> None:
        """Delete the memslot (guest accesses then exit as MMIO) and give its pages back.
        The host mapping itself stays until :meth:`close`: another thread may hold a
        view of it."""
        with self._lock:
            self.vm.set_user_memory_region(region.slot, region.gpa, 0, region._map.address)
            self.regions = [r for r in self.regions if r is not region]
            region._map.discard()
            self._retired.append(region._map)

    def region_at(self, gpa: int, n: int = 1) -> MemoryRegion:
        """The region holding all of ``[gpa, gpa+n)``, or GuestMemoryError."""
        if n < 0 or gpa < 0:
            raise GuestMemoryError(f"invalid guest range {gpa:#x}+{n}")
        for r in self.regions:
            if r.contains(gpa, n):
                return r
        raise GuestMemoryError(f"guest range {gpa:#x}..{gpa + n:#x} is outside guest RAM")

    def is_ram(self, gpa: int, n: int = 1) -> bool:
        return any(r.contains(gpa, n) for r in self.regions)

    def ram_ranges(self) -> list[tuple[int, int]]:
        """``[(gpa, size)]`` of the writable RAM, for loaders."""
        return [(r.gpa, r.size) for r in self.regions if not r.readonly]

    def view(self, gpa: int, n: int) -> memoryview:
        """A writable memoryview of guest RAM (no copy); bounds-checked.  (The loop is
        :meth:`region_at`'s, inline: every VMM access to guest RAM comes through here.)"""
        if n >= 0 and gpa >= 0:
            for r in self.regions:
                off = gpa - r.gpa
                if off >= 0 and off + n <= r.size:
                    m = r.mapping  # once: close() may empty it meanwhile
                    if m is not None:
                        return m.view[off:off + n]
                    break
        r = self.region_at(gpa, n)  # GuestMemoryError: outside RAM, or the region closed
        return r._map.view[gpa - r.gpa:gpa - r.gpa + n]

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.view(gpa, n))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data
        if self._vmm_written is not None:
            self._note_written(gpa, len(data))

    def write_many(self, writes: Iterable[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """:meth:`write` of each ``(gpa, data)``: a loader's plan, in one call.  The region
        of one write is tried first for the next (a plan's writes are a handful per
        machine, mostly in one region, and a region search each cost as much as the copy)."""
        note = self._vmm_written is not None
        start, end = 0, -1  # no region yet
        view = memoryview(b"")
        for gpa, data in writes:
            n = len(data)
            if not (start <= gpa and gpa + n <= end):
                r = self.region_at(gpa, n)  # GuestMemoryError: outside RAM
                start, end, view = r.gpa, r.gpa + r.size, r._map.view  # or closed
            view[gpa - start:gpa - start + n] = data
            if note:
                self._note_written(gpa, n)

    def read_int(self, gpa: int, size: int) -> int:
        value: int = struct.unpack(_U[size], self.view(gpa, size))[0]
        return value

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.view(gpa, size)[:] = struct.pack(_U[size], value & ((1 << (8 * size)) - 1))
        if self._vmm_written is not None:
            self._note_written(gpa, size)

    # --- what changed since a snapshot -------------------------------------------
    def _note_written(self, gpa: int, n: int) -> None:
        assert self._vmm_written is not None
        for page in range(gpa & ~(PAGE_SIZE - 1), gpa + n, PAGE_SIZE):
            self._vmm_written.add(page)

    def start_dirty_tracking(self) -> None:
        """From now on know which RAM pages change: KVM's dirty log for the guest's writes
        (turned on for every RAM slot, then cleared) and a set for the VMM's own writes
        through :meth:`write` (writes through :meth:`view` are not seen)."""
        with self._lock:
            for r in self.regions:
                if r.readonly:
                    continue
                if not r.log_dirty:
                    self.vm.set_user_memory_region(r.slot, r.gpa, r.size, r._map.address,
                                                   MEM_LOG_DIRTY_PAGES)
                    r.log_dirty = True
                self.vm.get_dirty_log(r.slot, r.size // PAGE_SIZE)
        self._vmm_written = set()

    def written_since_base(self, region: MemoryRegion) -> list[int]:
        """Pages of ``region`` the guest or the VMM wrote since tracking started or since
        the last call (KVM's log is cleared by reading it)."""
        pages = set(self.dirty_pages(region))
        if self._vmm_written is not None:
            pages |= {p for p in self._vmm_written if region.contains(p, PAGE_SIZE)}
            self._vmm_written -= pages
        return sorted(pages)

    def read_cstring(self, gpa: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string from the guest, at most ``limit`` bytes, never past RAM."""
        r = self.region_at(gpa, 1)
        n = min(limit, r.end - gpa)
        data = self.read(gpa, n)
        return data.split(b"\0", 1)[0]

    def drop_page(self, gpa: int) -> bool:
        """Make KVM forget its mapping of the RAM page at ``gpa`` (the guest's next access
        faults into KVM again); False when ``gpa`` is not RAM.  The VMM keeps access."""
        try:
            r = self.region_at(gpa & ~(PAGE_SIZE - 1), PAGE_SIZE)
        except GuestMemoryError:
            return False
        r._map.drop_page(gpa - r.gpa)
        return True

    def dirty_pages(self, region: MemoryRegion) -> list[int]:
        """KVM_GET_DIRTY_LOG for ``region``: the guest-physical addresses of the pages the
        guest wrote since the last call (the call clears the log)."""
        if not region.log_dirty:
            raise GuestMemoryError(f"region {region.name} was not created with log_dirty")
        npages = region.size // PAGE_SIZE
        bitmap = self.vm.get_dirty_log(region.slot, npages)
        import re  # here: only snapshots track dirty pages, and a plain run needs no re

        out = []
        for m in re.finditer(b"[^\x00]", bitmap):  # C-speed skip over the clean stretches
            i, byte = m.start(), bitmap[m.start()]
            while byte:
                bit = (byte & -byte).bit_length() - 1
                out.append(region.gpa + (i * 8 + bit) * PAGE_SIZE)
                byte &= byte - 1
        return out

    def close(self) -> None:
        """Unmap every region (each emptied before it goes: readers on other threads then
        see a closed region, not memory about to be unmapped)."""
        regions, self.regions = self.regions, []
        for r in regions:
            m, r.mapping = r.mapping, None
            if m is not None:
                m.close()
        for m in self._retired:
            m.close()
        self._retired.clear()
        self.regions = []
        self.dirty_base = None  # a closed machine does not keep a snapshot (its RAM) alive
