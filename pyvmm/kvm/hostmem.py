"""Host memory that backs guest RAM: shared mappings of a memfd (``mmap``), owned here.

Guest RAM is a ``MAP_SHARED`` mapping of a memfd (shmem): dropping a page's host PTEs with
``MADV_DONTNEED`` keeps its contents, so :meth:`HostMapping.drop_page` can make KVM forget
a page (its MMU notifier fires) without ever leaving the page inaccessible to the VMM's
own threads, which may be reading it at that moment.  The memfd also tells which parts of
RAM were ever written (``SEEK_DATA``, :meth:`HostMapping.data_ranges`): saving a snapshot
reads only those, where reading every page would allocate all of guest RAM.
"""

from __future__ import annotations

import errno
import os

from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.native import Cdata, ffi, lib

PAGE_SIZE = 4096
_MAP_NORESERVE = 2
_MAP_HUGETLB = 4


#: the answer of :func:`shmem_thp`, once per process
_SHMEM_THP: list[bool] = []
_THP = "/sys/kernel/mm/transparent_hugepage"
_HEEDS = (b"always", b"within_size", b"advise", b"force")


def _chosen(path: str) -> bytes:
    """The selected word of a THP policy file (``always [never] ...``)."""
    with open(path, "rb") as f:
        return b"".join(w.strip(b"[]") for w in f.read().split() if w.startswith(b"["))


def shmem_thp() -> bool:
    """Whether MADV_HUGEPAGE on guest RAM (shared memory) can get it huge pages: asked once
    per process, a syscall saved per machine where it cannot.  The shmem THP policy is
    ``shmem_enabled``'s selected word, and since Linux 6.11 each size's own
    (``hugepages-*/shmem_enabled``) where that is not ``inherit``: some size must heed
    advice.  No THP at all (no such file): no; a policy that cannot be read: advise (the
    advice costs nothing else)."""
    if not _SHMEM_THP:
        try:
            top = _chosen(f"{_THP}/shmem_enabled")
            sizes = [_chosen(f"{_THP}/{d}/shmem_enabled") for d in sorted(os.listdir(_THP))
                     if d.startswith("hugepages-") and os.path.exists(f"{_THP}/{d}/shmem_enabled")]
            inherit = top not in (b"never", b"deny")
            _SHMEM_THP.append(any(w in _HEEDS or (w == b"inherit" and inherit) for w in sizes)
                              if sizes else inherit)
        except FileNotFoundError:
            _SHMEM_THP.append(False)
        except OSError:
            _SHMEM_THP.append(True)
    return _SHMEM_THP[0]


def ram_error(step: int, fd: int, err: int, size: int, what: str) -> KvmError:
    """The KvmError of fresh RAM a native call could not make (``pyvmm_ram_add``'s
    ``step``, and ``fd``: whether the memfd itself was out of memory)."""
    if step == lib.PYVMM_STEP_SET_USER_MEMORY_REGION:
        return KvmError("KVM_SET_USER_MEMORY_REGION", err)
    if fd == lib.PYVMM_RAM_NO_MEMFD:  # ENOMEM, not mmap's
        return KvmError(f"memfd {what}", err, f"cannot make {size >> 20} MiB for {what}")
    return KvmError(f"mmap {what}", err, f"cannot map {size >> 20} MiB for {what}")


class HostMapping:
    """``size`` bytes of zeroed host memory; :meth:`close` unmaps it."""

    def __init__(self, size: int, *, hugepages: bool = False, what: str = "guest RAM",
                 file: tuple[int, int] | None = None,
                 slot: tuple[int, int, int, int] | None = None) -> None:
        """``file=(fd, offset)`` maps that part of a file copy-on-write (MAP_PRIVATE)
        instead of fresh anonymous memory: a clone's RAM from a snapshot file.  With
        ``slot=(vm_fd, slot, gpa, flags)``, fresh RAM is also registered as that memslot,
        in the same native call (KVM_SET_USER_MEMORY_REGION; undone if it fails)."""
        err = ffi.new("int *")
        #: the memfd behind the mapping (-1: hugepages or a file's, not ours to ask)
        self._fd = -1
        if file is None and (slot is not None or not hugepages):
            # memfd_create, ftruncate, mmap and MADV_HUGEPAGE (THP where the host heeds it)
            # in one native call, and the memslot too with ``slot``; a memfd the host
            # refuses for any reason but ENOMEM (a file-size limit: EFBIG, a seccomp
            # policy) leaves anonymous shared memory, whose save reads all of it
            # (data_ranges: None)
            fd, step = ffi.new("int *"), ffi.new("int *")
            if slot is not None:
                ptr = lib.pyvmm_ram_add(slot[0], slot[1], slot[2], size, slot[3], shmem_thp(),
                                        fd, step, err)
            else:
                ptr = lib.pyvmm_ram_map(size, shmem_thp(), fd, err)
            self._fd = int(fd[0])
            if ptr == ffi.NULL:  # the native call closed what it made
                self._fd = -1
                raise ram_error(int(step[0]), int(fd[0]), int(err[0]), size, what)
        elif file is not None:
            ptr = lib.pyvmm_mmap_file(size, file[0], file[1], err)
        else:
            ptr = lib.pyvmm_mmap(size, -1, _MAP_NORESERVE | _MAP_HUGETLB, err)
        if ptr == ffi.NULL:
            raise KvmError(f"mmap {what}", err[0], f"cannot map {size >> 20} MiB for {what}")
        self._take(ptr, size, file is not None)

    @classmethod
    def adopt(cls, ptr: Cdata, fd: int, size: int) -> HostMapping:
        """The mapping of fresh RAM a native call made (``pyvmm_machine_create``: ``fd`` its
        memfd, -1 for anonymous memory); owned from here on."""
        mapping = cls.__new__(cls)
        mapping._fd = fd
        mapping._take(ptr, size, False)
        return mapping

    def _take(self, ptr: Cdata, size: int, private: bool) -> None:
        self.private = private
        self.size = size
        self._ptr: Cdata = ptr
        #: ``uint8_t *`` to the first byte
        self.host: Cdata = ffi.cast("uint8_t *", ptr)
        #: the host virtual address, as KVM_SET_USER_MEMORY_REGION wants it
        self.address = int(ffi.cast("uintptr_t", ptr))
        self.buffer: Cdata = ffi.buffer(ptr, size)
        #: a memoryview of all of it, to slice (GuestMemory.view); empty once closed
        self.view = memoryview(self.buffer)

    def drop_page(self, offset: int) -> None:
        """Zap the host PTE of the page at ``offset`` (contents kept): KVM's MMU notifier
        drops its own mapping, so the guest's next access faults into KVM again.  (Not on
        a private file mapping, where it would throw the page's writes away.)"""
        if self.private:
            return
        lib.pyvmm_madvise(self.host + (offset & ~(PAGE_SIZE - 1)), PAGE_SIZE, lib.MADV_DONTNEED)

    def discard(self) -> None:
        """Give the pages back to the host (reads see zeros); the mapping stays valid."""
        lib.pyvmm_madvise(self._ptr, self.size, lib.MADV_REMOVE)

    def data_ranges(self) -> list[tuple[int, int]] | None:
        """``[(offset, length)]`` of the parts ever written (SEEK_DATA/SEEK_HOLE of the
        memfd; the rest reads as zeros), or None when unknown (then all of it may hold
        data).  Reading these only does not allocate the rest, as reading it all would."""
        if self._fd < 0:
            return None
        out: list[tuple[int, int]] = []
        off = 0
        try:
            while off < self.size:
                try:
                    start = os.lseek(self._fd, off, os.SEEK_DATA)
                except OSError as e:
                    if e.errno == errno.ENXIO:  # no data after off
                        break
                    raise
                off = min(os.lseek(self._fd, start, os.SEEK_HOLE), self.size)
                out.append((start, off - start))
        except OSError:
            return None
        return out

    def _close_fd(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def close(self) -> None:
        """Unmap (the attributes are emptied first: a thread looking at them then sees
        no memory rather than memory about to go) and close the memfd."""
        if self._ptr is not None:
            ptr, self._ptr = self._ptr, None
            self.host = None
            self.buffer = None
            self.view = memoryview(b"")
            lib.pyvmm_munmap(ptr, self.size)
        self._close_fd()
