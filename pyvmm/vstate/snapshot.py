"""Snapshots: everything a guest can observe, taken from a stopped machine and put back.

Per vCPU: registers, special registers, the XSAVE area (or FPU), XCRs, the LAPIC, every MSR
KVM lists (KVM_GET_MSR_INDEX_LIST) that it lets us read, pending events, MP state and the
guest's debug registers.  Per VM: the in-kernel PIC and IOAPIC, the PIT and the kvmclock.
pyvmm's devices (``Device.state``) and guest RAM.

RAM is restored in full the first time; the snapshot then becomes the machine's *dirty
base*: KVM's dirty log is on for every RAM slot and pyvmm notes the pages it writes itself
(``GuestMemory.write``), so the next restore of the same snapshot copies back only the pages
written since.  A restore of another snapshot copies everything again.

On disk (:meth:`Snapshot.save`, :func:`load`): a header (magic, format version), JSON
metadata (pyvmm's version, the host CPU model and KVM module, the machine's shape, the
vCPU and VM state, device states; bytes as base64) and then the RAM regions at page-aligned
offsets, all-zero pages left as holes, so that a clone maps RAM ``MAP_PRIVATE`` from the
file and copies nothing up front.  The file is input like any guest image: every field is
checked before use and a bad file is one :class:`SnapshotError` line.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import json
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvmm.errors import ExitStatus, PyvmmError
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.native import cdata_bytes, cdata_from
from pyvmm.kvm.run import EXIT_IO, EXIT_MMIO, EXIT_X86_RDMSR, EXIT_X86_WRMSR
from pyvmm.kvm.vcpu import lapic_struct, msrs_struct, regs_struct, xcrs_struct

if TYPE_CHECKING:
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.machine import Machine

MAGIC = b"PYVMMSNP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, metadata length
PAGE = 4096
MAX_METADATA = 64 << 20
#: KVM_GET_IRQCHIP chip ids: PIC master, PIC slave, IOAPIC
IRQCHIPS = (0, 1, 2)
#: exits after which KVM completes the instruction only at the next KVM_RUN
PENDING_EXITS = frozenset({EXIT_IO, EXIT_MMIO, EXIT_X86_RDMSR, EXIT_X86_WRMSR})


class SnapshotError(PyvmmError):
    """A snapshot cannot be used: not a pyvmm snapshot, another format version, taken with
    another pyvmm or on another host CPU, truncated or corrupt, or not matching the
    machine it is restored into."""

    status = ExitStatus.GUEST_IMAGE


@dataclass
class VcpuState:
    """One vCPU as KVM reports it (struct bytes as KVM laid them out)."""

    regs: dict[str, int]
    sregs: bytes
    fpu: bytes
    xsave: bytes | None
    xcrs: dict[int, int]
    lapic: bytes | None
    msrs: dict[int, int]
    events: bytes
    mp_state: int
    debugregs: bytes | None


@dataclass
class Snapshot:
    """A machine's state at one instant (see the module docstring).  ``config`` is the
    machine's shape, which a restore must match; ``ram`` is ``[(gpa, contents)]``."""

    config: dict[str, Any]
    vcpus: list[VcpuState]
    irqchips: list[bytes]
    pit: bytes | None
    clock: bytes | None
    devices: dict[str, dict[str, Any]]
    ram: list[tuple[int, memoryview]] = field(repr=False)
    #: device states came from this process's devices (not from a file)
    trusted: bool = True
    _mapping: mmap.mmap | None = field(default=None, repr=False)
    _prepared: dict[int, Prepared] = field(default_factory=dict, repr=False)
    _checked_shape: tuple[int, int, bool] | None = field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to ``path`` (replaced atomically)."""
        save(self, path)

    def prepared(self, m: Machine) -> Prepared:
        """The ioctl arguments for restoring into ``m`` (built on first use)."""
        p = self._prepared.get(id(m))
        if p is not None:
            return p
        vcpus = []
        for v, st in zip(m.vcpus, self.vcpus, strict=True):
            d: dict[str, Any] = {"sregs": cdata_from("struct kvm_sregs *", st.sregs),
                                 "regs": regs_struct(st.regs), "msrs": msrs_struct(st.msrs),
                                 "events": cdata_from("struct kvm_vcpu_events *", st.events)}
            if st.xsave is not None:
                d["xsave"] = v.xsave_buffer(st.xsave)
            else:
                d["fpu"] = cdata_from("struct kvm_fpu *", st.fpu)
            if st.xcrs:
                d["xcrs"] = xcrs_struct(st.xcrs)
            if st.debugregs is not None:
                d["debugregs"] = cdata_from("struct kvm_debugregs *", st.debugregs)
            if st.lapic is not None:
                d["lapic"] = lapic_struct(st.lapic)
            vcpus.append(d)
        p = Prepared(vcpus, [cdata_from("struct kvm_irqchip *", c) for c in self.irqchips],
                     None if self.pit is None else cdata_from("struct kvm_pit_state2 *", self.pit),
                     None if self.clock is None else cdata_from("struct kvm_clock_data *", self.clock),
                     self.trusted)
        self._prepared = {id(m): p}  # one machine at a time: a dict keeps the check simple
        return p

    def close(self) -> None:
        """Unmap a snapshot loaded from a file (machines cloned from it keep their own
        private mapping)."""
        self.ram = []
        if self._mapping is not None:
            with contextlib.suppress(BufferError):
                self._mapping.close()
            self._mapping = None


def host_identity() -> dict[str, str]:
    """What a snapshot must agree with to be restored here."""
    from pyvmm import __version__
    from pyvmm.hostinfo import detect

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
    return {"pyvmm": __version__, "cpu": cpu, "kvm": detect().module}


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


def readable_msrs(m: Machine) -> list[int]:
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


def take(m: Machine) -> Snapshot:
    """Snapshot ``m`` (stopped: between runs)."""
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
    m.memory.start_dirty_tracking()
    ram = [(r.gpa, memoryview(bytearray(r._map.buffer))) for r in m.memory.regions if not r.readonly]
    snap = Snapshot(machine_config(m), vcpus, chips, pit, clock, devices, ram)
    m.memory.dirty_base = snap
    return snap


def _xcrs(v: Vcpu) -> dict[int, int]:
    try:
        return v.get_xcrs()
    except KvmError:
        return {}


def machine_config(m: Machine) -> dict[str, Any]:
    image = m.image
    return {"mem": m.mem_size, "cpus": m.cpus, "irqchip": m.irqchip, "pit": m.pit,
            "pc": m.pc is not None, "cpu_features": m.cpu_features, "cmdline": m.cmdline,
            "image": os.path.abspath(image.path) if image is not None and image.path else "",
            "format": getattr(image, "format", ""),
            "regions": [[r.gpa, r.size] for r in m.memory.regions if not r.readonly]}


def restore(m: Machine, snap: Snapshot) -> int:
    """Put ``snap`` back into ``m`` (stopped); returns how many RAM pages were copied."""
    shape = (id(m), len(m.memory.regions), m.pc is not None)
    if snap._checked_shape != shape:  # the machine's shape changes rarely: check it once
        mine = machine_config(m)
        for k in ("mem", "cpus", "irqchip", "pit", "pc", "regions"):
            if mine[k] != snap.config.get(k):
                raise SnapshotError(f"the snapshot is of another machine: {k} is "
                                    f"{snap.config.get(k)!r} there, {mine[k]!r} here")
        snap._checked_shape = shape
    pages = _restore_ram(m, snap)
    prepared = snap.prepared(m)
    for v, st, p in zip(m.vcpus, snap.vcpus, prepared.vcpus, strict=True):
        if int(v.kvm_run.exit_reason) in PENDING_EXITS:
            complete_pending_io(v)
        set_vcpu_state(v, st, p)
    set_vm_state(m, prepared)
    for key, dev in m.bus.devices():
        state = snap.devices.get(key)
        if isinstance(state, dict):
            if prepared.trusted:
                dev.apply_state(state)
            else:
                dev.set_state(state)
    prepared.trusted = True  # checked against these devices once; plain setattr from now
    return pages


def set_vcpu_state(v: Vcpu, st: VcpuState, p: dict[str, Any]) -> None:
    """The KVM_SET_* ioctls that put one vCPU back, in the order KVM needs (special
    registers before the LAPIC, the LAPIC before the MSRs such as TSC_DEADLINE)."""
    v.set_sregs(p["sregs"])
    v.set_regs(p["regs"])
    if "xsave" in p:
        v.set_xsave(p["xsave"])
    else:
        v.set_fpu(p["fpu"])
    if "xcrs" in p:
        v.set_xcrs(p["xcrs"])
    if "debugregs" in p:
        v.set_debugregs(p["debugregs"])
    if "lapic" in p:
        v.set_lapic(p["lapic"])
    _set_msrs(v, st.msrs, p["msrs"])
    v.set_vcpu_events(p["events"])
    v.set_mp_state(st.mp_state)


def set_vm_state(m: Machine, prepared: Prepared) -> None:
    """The VM-wide ioctls of a restore: PIC/IOAPIC, PIT, kvmclock."""
    for chip in prepared.irqchips:
        m.vm.set_irqchip(chip)
    if prepared.pit is not None:
        m.vm.set_pit2(prepared.pit)
    if prepared.clock is not None:
        with contextlib.suppress(KvmError):
            m.vm.set_clock(prepared.clock)


def _set_msrs(v: Vcpu, msrs: dict[int, int], prepared: Any) -> None:
    """KVM_SET_MSRS stops at the first MSR it refuses: skip that one and go on (the
    prepared struct is used while KVM takes them all)."""
    n = v.set_msrs(prepared)
    items = list(msrs.items())[n + 1:] if n < len(msrs) else []
    while items:
        n = v.set_msrs(dict(items))
        items = items[n + 1:]


@dataclass
class Prepared:
    """A snapshot's state as the ioctls take it, built once per snapshot and machine."""

    vcpus: list[dict[str, Any]]
    irqchips: list[Any]
    pit: Any
    clock: Any
    trusted: bool


def _restore_ram(m: Machine, snap: Snapshot) -> int:
    mem = m.memory
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


# --- on disk ---------------------------------------------------------------------------
def _enc(v: Any) -> Any:
    """JSON for state values: bytes as {"b64": ...}, dicts with non-str keys as pairs."""
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {"d": {k: _enc(x) for k, x in v.items()}}
        return {"p": [[_enc(k), _enc(x)] for k, x in v.items()]}
    if isinstance(v, list | tuple):
        return [_enc(x) for x in v]
    return v


def _dec(v: Any) -> Any:
    if isinstance(v, dict):
        if set(v) == {"b64"}:
            return base64.b64decode(v["b64"], validate=True)
        if set(v) == {"d"} and isinstance(v["d"], dict):
            return {k: _dec(x) for k, x in v["d"].items()}
        if set(v) == {"p"} and isinstance(v["p"], list):
            return {_dec(k): _dec(x) for k, x in v["p"]}
        raise SnapshotError("corrupt snapshot: an unknown value encoding")
    if isinstance(v, list):
        return [_dec(x) for x in v]
    return v


def save(snap: Snapshot, path: str | os.PathLike[str]) -> None:
    layout = []
    meta: dict[str, Any] = {"host": host_identity(), "config": snap.config,
                            "vcpus": [_enc(vars(s)) for s in snap.vcpus],
                            "irqchips": _enc(snap.irqchips), "pit": _enc(snap.pit),
                            "clock": _enc(snap.clock), "devices": _enc(snap.devices)}
    body_probe = json.dumps({**meta, "ram": [[0, 0, 0]] * len(snap.ram)}).encode()
    offset = (HEADER.size + len(body_probe) + 64 * len(snap.ram) + PAGE - 1) & ~(PAGE - 1)
    for gpa, data in snap.ram:
        layout.append([gpa, len(data), offset])
        offset += (len(data) + PAGE - 1) & ~(PAGE - 1)
    meta["ram"] = layout
    body = json.dumps(meta).encode()
    assert HEADER.size + len(body) <= layout[0][2] if layout else True
    tmp = f"{os.fsdecode(path)}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.pwrite(fd, HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body, 0)
            zero = bytes(PAGE)
            for (_, data), (_, size, off) in zip(snap.ram, layout, strict=True):
                for p in range(0, size, PAGE):
                    page = data[p:p + PAGE]
                    if page != zero[:len(page)]:
                        os.pwrite(fd, page, off + p)
            os.ftruncate(fd, offset)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SnapshotError(f"cannot write the snapshot to {os.fsdecode(path)}: {e.strerror}") from None


def load(path: str | os.PathLike[str], *, check_host: bool = True) -> Snapshot:
    """Read a snapshot file; its RAM stays in the file, mapped copy-on-write."""
    name = os.fsdecode(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise SnapshotError(f"cannot open snapshot {name}: {e.strerror}") from None
    try:
        size = os.fstat(fd).st_size
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size or head[:8] != MAGIC:
            raise SnapshotError(f"{name} is not a pyvmm snapshot")
        _, version, _, meta_len = HEADER.unpack(head)
        if version != FORMAT_VERSION:
            raise SnapshotError(f"{name} is snapshot format {version}; this pyvmm reads format "
                                f"{FORMAT_VERSION}")
        if meta_len > min(MAX_METADATA, size - HEADER.size):
            raise SnapshotError(f"{name} is truncated or corrupt (metadata of {meta_len} bytes)")
        try:
            meta = json.loads(os.pread(fd, meta_len, HEADER.size))
        except (ValueError, UnicodeDecodeError):
            raise SnapshotError(f"{name} is corrupt (its metadata is not JSON)") from None
        snap = _from_meta(name, meta, check_host)
        mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ) if size else None
    except (KeyError, TypeError, ValueError, binascii.Error) as e:
        raise SnapshotError(f"{name} is corrupt ({type(e).__name__}: {e})") from None
    finally:
        os.close(fd)
    ram = []
    view = memoryview(mapping) if mapping is not None else memoryview(b"")
    for gpa, length, off in meta["ram"]:
        if not (isinstance(gpa, int) and isinstance(length, int) and isinstance(off, int)) or \
                off % PAGE or length <= 0 or length % PAGE or off < HEADER.size or off + length > size:
            raise SnapshotError(f"{name} is truncated or corrupt (RAM at offset {off} of a "
                                f"{size}-byte file)")
        ram.append((gpa, view[off:off + length]))
    snap.ram = ram
    snap._mapping = mapping
    snap.config["file"] = name
    snap.config["ram_offsets"] = [off for _, _, off in meta["ram"]]
    return snap


def _from_meta(name: str, meta: dict[str, Any], check_host: bool) -> Snapshot:
    host, here = meta["host"], host_identity()
    if check_host:
        for k, what in (("pyvmm", "pyvmm"), ("cpu", "host CPU"), ("kvm", "KVM module")):
            if host.get(k) != here[k]:
                raise SnapshotError(f"{name} was taken with {what} {host.get(k)!r}; this is "
                                    f"{here[k]!r}: take the snapshot again here")
    config = meta["config"]
    if not isinstance(config, dict) or not isinstance(config.get("cpus"), int):
        raise SnapshotError(f"{name} is corrupt (no machine shape)")
    vcpus = []
    for raw in meta["vcpus"]:
        d = _dec(raw)
        vcpus.append(VcpuState(
            {str(k): int(v) for k, v in d["regs"].items()}, bytes(d["sregs"]), bytes(d["fpu"]),
            None if d["xsave"] is None else bytes(d["xsave"]),
            {int(k): int(v) for k, v in d["xcrs"].items()},
            None if d["lapic"] is None else bytes(d["lapic"]),
            {int(k): int(v) for k, v in d["msrs"].items()}, bytes(d["events"]), int(d["mp_state"]),
            None if d["debugregs"] is None else bytes(d["debugregs"])))
    if len(vcpus) != config["cpus"]:
        raise SnapshotError(f"{name} is corrupt ({len(vcpus)} vCPU states for {config['cpus']} vCPUs)")
    chips = [bytes(c) for c in _dec(meta["irqchips"])]
    pit, clock = _dec(meta["pit"]), _dec(meta["clock"])
    devices = _dec(meta["devices"])
    if not isinstance(devices, dict):
        raise SnapshotError(f"{name} is corrupt (device states)")
    return Snapshot(config, vcpus, chips, None if pit is None else bytes(pit),
                    None if clock is None else bytes(clock), devices, [], trusted=False)
