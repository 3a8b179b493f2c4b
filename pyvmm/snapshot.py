"""Snapshots: everything a guest can observe, taken from a stopped machine and put back.

Per vCPU: registers, special registers, the XSAVE area (or FPU), XCRs, the LAPIC, every MSR
KVM lists (KVM_GET_MSR_INDEX_LIST) that it lets us read, pending events, MP state and the
guest's debug registers.  Per VM: the in-kernel PIC and IOAPIC, the PIT and the kvmclock.
pyvmm's devices (``Device.state``) and guest RAM.

RAM is restored in full the first time; the snapshot then becomes the machine's *dirty
base*: KVM's dirty log is on for every RAM slot and pyvmm notes the pages it writes itself
(``GuestMemory.write``), so the next restore of the same snapshot copies back only the pages
written since.  A restore of another snapshot copies everything again.

On disk (:meth:`Snapshot.save`, :func:`load`): see :mod:`pyvmm.snapshot_file`, which
checks a file against its schema once, at load.  A snapshot from a file is *untrusted*
until its first restore: device states are checked by each device's ``check_state`` before
anything is changed, and KVM's refusal of a vCPU or VM state is a SnapshotError.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pyvmm.errors import ConfigError, GuestImageError
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.native import cdata_bytes
from pyvmm.kvm.run import EXIT_IO, EXIT_MMIO, EXIT_X86_RDMSR, EXIT_X86_WRMSR
from pyvmm.loader import open_image
from pyvmm.snapshot_file import (
    HEADER,
    MAGIC,
    PAGE,
    Prepared,
    Snapshot,
    SnapshotError,
    VcpuState,
    host_identity,
    read,
    write,
)
from pyvmm.snapshot_file import ram_file as snapshot_ram_file

if TYPE_CHECKING:
    from pyvmm.devices.bus import Bus
    from pyvmm.kvm.system import Kvm
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.kvm.vm import Vm
    from pyvmm.loader import GuestImage
    from pyvmm.memory import GuestMemory

__all__ = ["HEADER", "MAGIC", "Snapshot", "SnapshotError", "SnapshotTarget", "VcpuState",
           "clone", "host_identity", "load", "restore", "save", "take"]


class SnapshotTarget(Protocol):
    """What taking and restoring a snapshot needs of a machine (``Machine`` is one): its
    shape (checked against a snapshot's), its fds, its RAM and its devices."""

    mem_size: int
    cpus: int
    irqchip: str
    pit: bool
    cpu_features: str
    cmdline: str
    image: GuestImage | None
    kvm: Kvm
    vm: Vm
    memory: GuestMemory

    @property
    def vcpus(self) -> Sequence[Vcpu]: ...

    @property
    def bus(self) -> Bus: ...

    @property
    def pc(self) -> object | None: ...


class Clone(SnapshotTarget, Protocol):
    """A machine :func:`clone` builds: a target that can grow the PC platform and restore,
    and closes when the clone fails."""

    def add_pc_platform(self) -> object: ...

    def restore(self, snap: Snapshot) -> int: ...

    def close(self) -> None: ...


M = TypeVar("M", bound=Clone)

#: KVM_GET_IRQCHIP chip ids: PIC master, PIC slave, IOAPIC
IRQCHIPS = (0, 1, 2)
#: exits after which KVM completes the instruction only at the next KVM_RUN
PENDING_EXITS = frozenset({EXIT_IO, EXIT_MMIO, EXIT_X86_RDMSR, EXIT_X86_WRMSR})


# --- taking and restoring -------------------------------------------------------------
def complete_pending_io(vcpu: Vcpu) -> None:
    """KVM_RUN with ``immediate_exit`` set: KVM finishes an I/O or MMIO instruction whose
    exit userspace answered, without running guest code (KVM API, "immediate_exit"); only
    then are the registers the guest's."""
    run = vcpu.kvm_run
    run.immediate_exit = 1
    try:
        err = vcpu.run_once()
    finally:
        run.immediate_exit = 0
    if err not in (0, errno.EINTR, errno.EAGAIN):
        raise KvmError("KVM_RUN", err, "completing the vCPU's last I/O instruction")


def readable_msrs(m: SnapshotTarget) -> list[int]:
    """The MSRs KVM lists that this vCPU lets us read (KVM_GET_MSRS stops at the first it
    cannot read, so the list is found once per machine by dropping those)."""
    cached: list[int] | None = getattr(m, "_snapshot_msrs", None)
    if cached is not None:
        return cached
    want = m.kvm.get_msr_index_list()
    good: list[int] = []
    vcpu = m.vcpus[0]
    while want:
        got = vcpu.get_msrs(want)
        good += list(got)
        want = want[len(got) + 1:]  # skip the one it refused
    m._snapshot_msrs = good  # type: ignore[attr-defined]
    return good


def take(m: SnapshotTarget, *, copy_ram: bool = True) -> Snapshot:
    """Snapshot ``m`` (stopped: between runs).  ``copy_ram=False`` gives a snapshot whose
    RAM is the machine's own memory, valid only until the machine runs again: for writing
    it to a file at once without a second copy of guest RAM (:func:`save_machine`)."""
    msrs = readable_msrs(m)
    vcpus = []
    for v in m.vcpus:
        if int(v.kvm_run.exit_reason) in PENDING_EXITS:
            complete_pending_io(v)
        xsave: bytes | None
        try:
            xsave = v.get_xsave()
        except KvmError:
            xsave = None
        lapic = bytes(v.get_lapic()) if m.irqchip != "none" else None
        try:
            debugregs: bytes | None = cdata_bytes(v.get_debugregs())
        except KvmError:
            debugregs = None
        vcpus.append(VcpuState(v.get_regs(), cdata_bytes(v.get_sregs()), cdata_bytes(v.get_fpu()),
                               xsave, _xcrs(v), lapic, v.get_msrs(msrs),
                               cdata_bytes(v.get_vcpu_events()), v.get_mp_state(), debugregs))
    chips = [cdata_bytes(m.vm.get_irqchip(c)) for c in IRQCHIPS] if m.irqchip == "kernel" else []
    pit = cdata_bytes(m.vm.get_pit2()) if m.pit else None
    try:
        clock: bytes | None = cdata_bytes(m.vm.get_clock())
    except KvmError:
        clock = None
    devices = {key: dev.state() for key, dev in m.bus.devices()}
    regions = [r for r in m.memory.regions if not r.readonly]
    if not copy_ram:
        return Snapshot(machine_config(m), vcpus, chips, pit, clock, devices,
                        [(r.gpa, memoryview(r._map.buffer)) for r in regions])
    m.memory.start_dirty_tracking()
    ram = [(r.gpa, memoryview(bytearray(r._map.buffer))) for r in regions]
    snap = Snapshot(machine_config(m), vcpus, chips, pit, clock, devices, ram)
    m.memory.dirty_base = snap
    return snap


def save_machine(m: SnapshotTarget, path: str | os.PathLike[str]) -> None:
    """Write a snapshot of ``m`` (stopped) to ``path``, streaming RAM from the machine's
    own memory: saving costs no copy of guest RAM (an in-memory snapshot would)."""
    extents = [r._map.data_ranges() for r in m.memory.regions if not r.readonly]
    write(take(m, copy_ram=False), path, extents)


def load(path: str | os.PathLike[str], *, check_host: bool = True) -> Snapshot:
    """Read and check a snapshot file (:func:`pyvmm.snapshot_file.read`)."""
    return read(path, check_host=check_host)


def save(snap: Snapshot, path: str | os.PathLike[str]) -> None:
    """Write ``snap`` to ``path`` (:func:`pyvmm.snapshot_file.write`)."""
    write(snap, path)


def _xcrs(v: Vcpu) -> dict[int, int]:
    try:
        return v.get_xcrs()
    except KvmError:
        return {}


def machine_config(m: SnapshotTarget) -> dict[str, Any]:
    """The machine a snapshot is of: its shape (:func:`machine_shape`), then what a clone
    takes from it besides (CPU features, command line, the image for symbols)."""
    image = m.image
    return {**dict(machine_shape(m)), "cpu_features": m.cpu_features, "cmdline": m.cmdline,
            "image": os.path.abspath(image.path) if image is not None and image.path else "",
            "format": getattr(image, "format", "")}


def machine_shape(m: SnapshotTarget) -> tuple[tuple[str, Any], ...]:
    """What of :func:`machine_config` a snapshot must match to be restored into ``m``."""
    return (("mem", m.mem_size), ("cpus", m.cpus), ("irqchip", m.irqchip), ("pit", m.pit),
            ("pc", m.pc is not None),
            ("regions", [[r.gpa, r.size] for r in m.memory.regions if not r.readonly]))


def restore(m: SnapshotTarget, snap: Snapshot) -> int:
    """Put ``snap`` back into ``m`` (stopped); returns how many RAM pages were copied.
    ``snap`` is taken from ``m`` or a machine of the same shape (SnapshotError otherwise,
    and for a corrupt one)."""
    try:
        return _restore(m, snap)
    except ValueError as e:  # a struct of the wrong size from a file
        raise SnapshotError(f"the snapshot is corrupt: {e}") from None


def _restore(m: SnapshotTarget, snap: Snapshot) -> int:
    shape = (id(m), len(m.memory.regions), m.pc is not None)
    if snap._checked_shape != shape:  # the machine's shape changes rarely: check it once
        for k, mine in machine_shape(m):
            if mine != snap.config.get(k):
                raise SnapshotError(f"the snapshot is of another machine: {k} is "
                                    f"{snap.config.get(k)!r} there, {mine!r} here")
        snap._checked_shape = shape
    prepared = snap.prepared(m)
    devices = [(dev, state) for key, dev in m.bus.devices()
               if isinstance(state := snap.devices.get(key), dict)]
    if not prepared.trusted:  # from a file: every device state checked before any change
        for dev, state in devices:
            try:
                dev.check_state(state)
            except ValueError as e:
                raise SnapshotError(f"the snapshot's state of device {dev.name} is corrupt: {e}") from None
    pages = _restore_ram(m, snap)
    try:
        for v, st, p in zip(m.vcpus, snap.vcpus, prepared.vcpus, strict=True):
            if int(v.kvm_run.exit_reason) in PENDING_EXITS:
                complete_pending_io(v)
            set_vcpu_state(v, st, p)
        set_vm_state(m, prepared)
    except KvmError as e:
        if prepared.trusted:
            raise
        raise SnapshotError(f"KVM refuses the snapshot's state: {e}") from None
    for dev, state in devices:  # each checked above (or on an earlier restore)
        dev.apply_state(state)
    prepared.trusted = True  # checked against these devices once; plain setattr from now
    return pages


def set_vcpu_state(v: Vcpu, st: VcpuState, p: dict[str, Any]) -> None:
    """The KVM_SET_* ioctls that put one vCPU back, in the order KVM needs (special
    registers before the LAPIC, the LAPIC before the MSRs such as TSC_DEADLINE): one native
    call (pyvmm_vcpu_restore) while KVM takes every MSR, the rest from here where not."""
    nmsrs = v.restore(p["native"])
    if nmsrs < len(st.msrs):
        _set_msrs(v, st.msrs, nmsrs)
        v.set_vcpu_events(p["events"])
        v.set_mp_state(st.mp_state)


def set_vm_state(m: SnapshotTarget, prepared: Prepared) -> None:
    """The VM-wide ioctls of a restore: PIC/IOAPIC, PIT, kvmclock."""
    for chip in prepared.irqchips:
        m.vm.set_irqchip(chip)
    if prepared.pit is not None:
        m.vm.set_pit2(prepared.pit)
    if prepared.clock is not None:
        with contextlib.suppress(KvmError):
            m.vm.set_clock(prepared.clock)


def _set_msrs(v: Vcpu, msrs: dict[int, int], n: int) -> None:
    """KVM_SET_MSRS stops at the first MSR it refuses: after the prepared struct's ``n``
    were taken, skip the one refused and go on with the rest."""
    items = list(msrs.items())[n + 1:] if n < len(msrs) else []
    while items:
        n = v.set_msrs(dict(items))
        items = items[n + 1:]


def _restore_ram(m: SnapshotTarget, snap: Snapshot) -> int:
    mem = m.memory
    if snap._ram_in is mem:  # a clone's RAM, mapped from the snapshot's file
        snap._ram_in = None
        return 0
    regions = [r for r in mem.regions if not r.readonly]
    if mem.dirty_base is snap:
        pages = 0
        for r, (_, saved) in zip(regions, snap.ram, strict=True):
            buf = r._map.buffer
            written = mem.written_since_base(r)
            pages += len(written)
            i = 0
            while i < len(written):  # one copy per run of consecutive pages
                j = i + 1
                while j < len(written) and written[j] == written[j - 1] + PAGE:
                    j += 1
                lo, hi = written[i] - r.gpa, written[j - 1] - r.gpa + PAGE
                buf[lo:hi] = saved[lo:hi]
                i = j
        return pages
    for r, (gpa, saved) in zip(regions, snap.ram, strict=True):
        if gpa != r.gpa or len(saved) != r.size:
            raise SnapshotError("the snapshot's RAM does not match this machine's")
        r._map.buffer[:] = saved
    mem.start_dirty_tracking()
    mem.dirty_base = snap
    return sum(r.size for r in regions) // PAGE




#: guest images parsed for a clone's symbols, by the file's identity (see symbols_image)
_IMAGES: dict[tuple[Any, ...], GuestImage] = {}
IMAGES_KEPT = 4
_IMAGES_LOCK = threading.Lock()


def _identity(path: str, st: os.stat_result, mem: int, fmt: str | None) -> tuple[Any, ...]:
    return (path, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, mem, fmt)


def symbols_image(path: str, mem: int, fmt: str | None) -> GuestImage | None:
    """The guest image a snapshot names, parsed for its symbols (None if it is gone or no
    longer a guest image).  A harness clones thousands of times from one snapshot: the parse
    is kept per process by the file's identity (device, inode, size, modification and change
    times, the same before and after the parse), so a file replaced or rewritten since is
    parsed again; at most IMAGES_KEPT are kept (with their bytes).  Images are shared as
    ``Machine.load_file``'s callers may share one: a machine only reads its image."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return None
    key = _identity(path, st, mem, fmt)
    image = _IMAGES.get(key)
    if image is None:
        try:
            image = open_image(path, mem=mem, fmt=fmt)
            after = _identity(path, os.stat(path), mem, fmt)
        except (GuestImageError, OSError, ValueError):
            return None
        if after != key:  # replaced while it was read: this parse is nobody's to keep
            return image
        with _IMAGES_LOCK:  # clone loops may run in threads
            if len(_IMAGES) >= IMAGES_KEPT:
                del _IMAGES[next(iter(_IMAGES))]  # the oldest
            _IMAGES[key] = image
    return image


def clone(make: Callable[..., M], source: str | os.PathLike[str] | Snapshot, **kw: Any) -> M:
    """A machine built by ``make`` (``Machine``) that goes on from ``source``, a snapshot
    file (its RAM mapped copy-on-write from the file: nothing copied up front) or an
    in-memory snapshot; ``kw`` sets what is not part of the guest's state."""
    # a file: this call's own snapshot, whose RAM only the clone maps
    snap = source if isinstance(source, Snapshot) else read(source, map_ram=False)
    snap._private = snap is not source  # this call's own: its state is the file's
    try:
        return _clone(make, snap, snapshot_ram_file(snap), snap is not source, **kw)
    finally:
        if snap is not source:  # this call's own: its fd and mapping go now, not at GC
            snap.close()


def _clone(make: Callable[..., M], snap: Snapshot, ram_file: tuple[int, list[int]] | None,
           owned: bool, **kw: Any) -> M:
    cfg = snap.config
    try:
        m = make(mem=cfg["mem"], cpus=cfg["cpus"], irqchip=cfg["irqchip"], pit=cfg["pit"],
                 cpu_features=cfg.get("cpu_features", ""), cmdline=cfg.get("cmdline", ""),
                 ram_file=ram_file, **kw)
    except (KeyError, TypeError, ConfigError) as e:
        raise SnapshotError(f"the snapshot's machine description is unusable here: {e}") from None
    try:
        if cfg.get("pc"):
            _add_pc_platform(m, snap, ram_file)
        image = cfg.get("image")
        if image:  # for symbols only: the guest's bytes are in the snapshot's RAM
            m.image = symbols_image(image, m.mem_size, cfg.get("format") or None)
        if ram_file is not None:
            snap._ram_in = m.memory  # RAM is the snapshot's already: nothing to copy
        try:
            m.restore(snap)
        finally:
            snap._ram_in = None
        if ram_file is not None and not owned:  # the caller may restore it again: only
            m.memory.start_dirty_tracking()     # the pages written since need copying
            m.memory.dirty_base = snap
        if owned:  # no one else can restore it: do not keep it alive
            m.memory.dirty_base = None
    except BaseException:
        m.close()
        raise
    return m


def _add_pc_platform(m: Clone, snap: Snapshot, ram_file: tuple[int, list[int]] | None) -> None:
    """The PC platform for a clone.  Its set-up writes firmware tables (the IVT, ACPI) into
    RAM, which for a clone mapped from the file is the snapshot's already: the pages it
    wrote are read back from the file, so the guest finds what it had (its own IVT, the
    waking vector it put in the FACS), not a fresh machine's tables."""
    if ram_file is None:  # RAM is copied whole by the restore after this
        m.add_pc_platform()
        return
    mem = m.memory
    mem.start_dirty_tracking()  # (for the VMM's own writes: the guest has not run)
    m.add_pc_platform()
    fd, offsets = ram_file
    for r, off in zip([r for r in mem.regions if not r.readonly], offsets, strict=True):
        view = r._map.view
        for page in mem.written_since_base(r):
            lo = page - r.gpa
            if os.preadv(fd, [view[lo:lo + PAGE]], off + lo) != PAGE:
                raise SnapshotError(f"{snap.config.get('file', 'the snapshot file')} was "
                                    "truncated after it was read")


def checked(snap: object) -> Snapshot:
    """``snap`` if it is a :class:`Snapshot`; TypeError naming what to do for anything else
    (a path: :func:`load` or ``Machine.from_snapshot``)."""
    if not isinstance(snap, Snapshot):
        what = f"{type(snap).__name__} {snap!r}" if isinstance(snap, str | os.PathLike) \
            else type(snap).__name__
        raise TypeError(f"restore() takes a Snapshot, not {what}; for a snapshot file use "
                        "restore(pyvmm.snapshot.load(path)) or Machine.from_snapshot(path)")
    return snap
