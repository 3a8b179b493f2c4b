"""Guest RAM: mmap-backed regions registered as memslots, with bounds-checked access.

Every access the VMM makes on the guest's behalf goes through :meth:`GuestMemory.read`,
:meth:`GuestMemory.write` or :meth:`GuestMemory.view`, which refuse any range not wholly
inside one RAM region.  Guest-supplied addresses are untrusted: an address outside RAM is
a :class:`GuestMemoryError`, never an out-of-bounds host access.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvmm._native import ffi, lib
from pyvmm.kvm.errors import KvmError

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

PAGE_SIZE = 4096
_U = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class GuestMemoryError(ValueError):
    """A guest-physical range is not (wholly) backed by guest RAM."""


@dataclass
class MemoryRegion:
    """One memslot: ``size`` bytes of host memory at guest-physical ``gpa``."""

    slot: int
    gpa: int
    size: int
    readonly: bool = False
    log_dirty: bool = False
    name: str = "ram"
    host: Any = field(default=None, repr=False)  # cffi uint8_t* into the mapping
    buf: Any = field(default=None, repr=False)  # cffi buffer over the mapping

    @property
    def end(self) -> int:
        return self.gpa + self.size

    @property
    def host_addr(self) -> int:
        return int(ffi.cast("uintptr_t", self.host))

    def contains(self, gpa: int, n: int = 1) -> bool:
        return n >= 0 and self.gpa <= gpa and gpa + n <= self.end


class GuestMemory:
    """The VM's RAM regions.  Owns their mappings; :meth:`close` unmaps them."""

    def __init__(self, vm: Vm) -> None:
        self.vm = vm
        self.regions: list[MemoryRegion] = []
        self._next_slot = 0

    def add_ram(self, gpa: int, size: int, *, readonly: bool = False, log_dirty: bool = False,
                name: str = "ram", hugepages: bool = False) -> MemoryRegion:
        """Map ``size`` bytes of fresh anonymous memory at ``gpa`` as a new memslot.

        Read-only slots make guest writes exit as KVM_EXIT_MMIO (and be dropped); dirty
        logging lets :meth:`dirty_pages` report what the guest wrote.
        """
        if gpa % PAGE_SIZE or size % PAGE_SIZE or size <= 0:
            raise GuestMemoryError(f"region {name} at {gpa:#x}+{size:#x} is not page-aligned")
        for r in self.regions:
            if gpa < r.end and r.gpa < gpa + size:
                raise GuestMemoryError(f"region {name} at {gpa:#x}+{size:#x} overlaps {r.name}")
        err = ffi.new("int *")
        ptr = lib.pyvmm_mmap(size, -1, 2 | (4 if hugepages else 0), err)
        if ptr == ffi.NULL:
            raise KvmError("mmap guest RAM", err[0], f"cannot map {size >> 20} MiB for {name}")
        if not hugepages:
            lib.pyvmm_madvise(ptr, size, lib.MADV_HUGEPAGE)  # THP where the host allows it
        region = MemoryRegion(self._next_slot, gpa, size, readonly, log_dirty, name,
                              ffi.cast("uint8_t *", ptr), ffi.buffer(ptr, size))
        flags = (lib.KVM_MEM_READONLY if readonly else 0) | (
            lib.KVM_MEM_LOG_DIRTY_PAGES if log_dirty else 0)
        try:
            self.vm.set_user_memory_region(region.slot, gpa, size, region.host_addr, flags)
        except KvmError:
            lib.pyvmm_munmap(ptr, size)
            raise
        self._next_slot += 1
        self.regions.append(region)
        self.regions.sort(key=lambda r: r.gpa)
        return region

    def remove(self, region: MemoryRegion) -> None:
        """Delete the memslot (guest accesses then exit as MMIO) and unmap its memory."""
        self.vm.set_user_memory_region(region.slot, region.gpa, 0, region.host_addr)
        self.regions.remove(region)
        lib.pyvmm_munmap(region.host, region.size)

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

    def view(self, gpa: int, n: int) -> memoryview:
        """A writable memoryview of guest RAM (no copy); bounds-checked."""
        r = self.region_at(gpa, n)
        off = gpa - r.gpa
        return memoryview(r.buf)[off:off + n]

    def read(self, gpa: int, n: int) -> bytes:
        return bytes(self.view(gpa, n))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data

    def read_int(self, gpa: int, size: int) -> int:
        return struct.unpack(_U[size], self.view(gpa, size))[0]

    def write_int(self, gpa: int, size: int, value: int) -> None:
        self.view(gpa, size)[:] = struct.pack(_U[size], value & ((1 << (8 * size)) - 1))

    def read_cstring(self, gpa: int, limit: int = 4096) -> bytes:
        """A NUL-terminated string from the guest, at most ``limit`` bytes, never past RAM."""
        r = self.region_at(gpa, 1)
        n = min(limit, r.end - gpa)
        data = self.read(gpa, n)
        return data.split(b"\0", 1)[0]

    def dirty_pages(self, region: MemoryRegion) -> list[int]:
        """KVM_GET_DIRTY_LOG for ``region``: the guest-physical addresses of the pages the
        guest wrote since the last call (the call clears the log)."""
        if not region.log_dirty:
            raise GuestMemoryError(f"region {region.name} was not created with log_dirty")
        npages = region.size // PAGE_SIZE
        bitmap = self.vm.get_dirty_log(region.slot, npages)
        out = []
        for i, byte in enumerate(bitmap):
            while byte:
                bit = (byte & -byte).bit_length() - 1
                out.append(region.gpa + (i * 8 + bit) * PAGE_SIZE)
                byte &= byte - 1
        return out

    def close(self) -> None:
        for r in self.regions:
            lib.pyvmm_munmap(r.host, r.size)
        self.regions.clear()
