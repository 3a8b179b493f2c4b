"""The snapshot file: its layout, the schema every file is checked against, and writing one.

Layout: a header (magic, format version, reserved, metadata length), JSON metadata (pyvmm's
version, the host CPU model and KVM module, the machine's shape, the vCPU and VM state,
device states; bytes as ``{"b64": ...}``, dicts with integer keys as ``{"p": [[k, v]]}``) and
then the RAM regions at page-aligned offsets, all-zero pages left as holes, so that a clone
maps RAM ``MAP_PRIVATE`` from the file and copies nothing up front.

A snapshot file is untrusted input, like a guest image: :func:`read` checks the *whole*
metadata against the schema below before anything is built from it -- bounded nesting, the
type and range of every value, the size of every KVM struct, RAM entries that lie inside the
file and match the machine's shape -- so a bad file is one :class:`SnapshotError` line (exit
status 120), never a crash at restore time or a SIGBUS when the guest touches RAM the file
does not have.  The checks run once, at load: restores of a loaded snapshot cost nothing more,
and a process that reads the same metadata bytes again (a clone loop) gets a copy of what
it checked the first time (:func:`checked_metadata`).

:func:`write` streams RAM from where it is (a snapshot's copy, or a stopped machine's own
memory) page by page, into a temporary file beside the target that is renamed over it; an
error or a signal removes the temporary file, and only a regular file (or nothing) is ever
replaced.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import marshal
import mmap
import os
import stat
import struct
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pyvmm.errors import ExitStatus, PyvmmError
from pyvmm.snapshot_schema import (
    U32,
    U64,
    SchemaError,
    array,
    blob,
    boolean,
    int_map,
    integer,
    obj,
    opt_blob,
    show,
    state_value,
    string,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyvmm.kvm.vcpu import Vcpu


class HasVcpus(Protocol):
    """What :meth:`Snapshot.prepared` needs of a machine: its vCPUs, BSP first."""

    @property
    def vcpus(self) -> Sequence[Vcpu]: ...

MAGIC = b"PYVMMSNP"
FORMAT_VERSION = 1
HEADER = struct.Struct("<8sIIQ")  # magic, version, reserved, metadata length
PAGE = 4096
MAX_METADATA = 64 << 20
#: KVM refuses more in one KVM_SET_MSRS (MAX_IO_MSRS) and KVM_SET_XCRS (KVM_MAX_XCRS)
MAX_MSRS = 255
MAX_XCRS = 16
#: KVM_MP_STATE_RUNNABLE .. KVM_MP_STATE_SUSPENDED
MAX_MP_STATE = 10
#: an XSAVE area larger than any CPU's (AMX makes it about 11 KiB)
MAX_XSAVE = 256 << 10
HOST_KEYS = ("pyvmm", "cpu", "kvm")
CONFIG_KEYS = frozenset({"mem", "cpus", "irqchip", "pit", "pc", "cpu_features", "cmdline", "image",
                         "format", "regions"})
VCPU_KEYS = frozenset({"regs", "sregs", "fpu", "xsave", "xcrs", "lapic", "msrs", "events",
                       "mp_state", "debugregs"})


class SnapshotError(PyvmmError):
    """A snapshot cannot be used: not a pyvmm snapshot, another format version, taken with
    another pyvmm or on another host CPU, truncated or corrupt, or not matching the
    machine it is restored into."""

    status = ExitStatus.GUEST_IMAGE


# --- the snapshot as data: what take() fills, read() checks and write() writes ------
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
    #: the snapshot file, open while the snapshot is (a clone maps its RAM from it)
    _fd: int = field(default=-1, repr=False)
    _prepared: dict[int, Prepared] = field(default_factory=dict, repr=False)
    _checked_shape: tuple[int, int, bool] | None = field(default=None, repr=False)
    #: ioctl arguments built from the same checked file bytes, by the vCPUs' XSAVE sizes:
    #: shared by every snapshot read from them (see :meth:`prepared`)
    _templates: dict[tuple[int, ...], Prepared] | None = field(default=None, repr=False)
    #: nobody but pyvmm holds this snapshot, so its state is the file's (a clone's own)
    _private: bool = field(default=False, repr=False)
    #: the GuestMemory whose RAM is already this snapshot's (a clone's, mapped from the file):
    #: its first restore copies no RAM
    _ram_in: object | None = field(default=None, repr=False)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the snapshot to ``path`` (replaced atomically; only a regular file or
        nothing is replaced)."""
        write(self, path)

    def prepared(self, m: HasVcpus) -> Prepared:
        """The ioctl arguments for restoring into ``m`` (built on first use)."""
        p = self._prepared.get(id(m))
        if p is not None:
            return p
        # a private snapshot's state is its file's: what another snapshot of the same bytes
        # built serves (KVM only reads these structs); a user's may have been edited
        shape = tuple(v.xsave_size for v in m.vcpus)
        shared = self._templates if self._private else None
        if shared is not None and (t := shared.get(shape)) is not None:
            p = Prepared(t.vcpus, t.irqchips, t.pit, t.clock, self.trusted)
            self._prepared = {id(m): p}
            return p
        from pyvmm.kvm.native import cdata_from, ffi
        from pyvmm.kvm.vcpu import lapic_struct, msrs_struct, regs_struct, xcrs_struct

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
            d["mp_state"] = ffi.new("struct kvm_mp_state *", {"mp_state": st.mp_state})
            # every ioctl of the restore in one native call (the structs above stay in d)
            d["native"] = ffi.new("struct pyvmm_vcpu_state *", {
                k: d.get(k, ffi.NULL) for k in ("sregs", "regs", "xsave", "fpu", "xcrs",
                                                 "debugregs", "lapic", "msrs", "events",
                                                 "mp_state")})
            vcpus.append(d)
        p = Prepared(vcpus, [cdata_from("struct kvm_irqchip *", c) for c in self.irqchips],
                     None if self.pit is None else cdata_from("struct kvm_pit_state2 *", self.pit),
                     None if self.clock is None else cdata_from("struct kvm_clock_data *", self.clock),
                     self.trusted)
        self._prepared = {id(m): p}  # one machine at a time: a dict keeps the check simple
        if shared is not None and len(shared) < 4:
            shared[shape] = p
        return p

    def close(self) -> None:
        """Unmap a snapshot loaded from a file and close the file (machines cloned from it
        keep their own private mapping)."""
        self.ram = []
        self._prepared = {}
        self._templates = None
        self._ram_in = None
        if self._mapping is not None:
            with contextlib.suppress(BufferError):
                self._mapping.close()
            self._mapping = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class Prepared:
    """A snapshot's state as the ioctls take it, built once per snapshot and machine."""

    vcpus: list[dict[str, Any]]
    irqchips: list[Any]
    pit: Any
    clock: Any
    trusted: bool


@functools.cache
def _host_identity() -> tuple[tuple[str, str], ...]:
    from pyvmm import __version__
    from pyvmm.hostinfo import detect

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
    return (("pyvmm", __version__), ("cpu", cpu), ("kvm", detect().module))


def host_identity() -> dict[str, str]:
    """What a snapshot must agree with to be restored here (found once per process: a
    clone loop loads a file per clone)."""
    return dict(_host_identity())


# --- value encoding ----------------------------------------------------------------------
def encode(v: Any) -> Any:
    """JSON for state values: bytes as {"b64": ...}, dicts with non-str keys as pairs."""
    if isinstance(v, bytes | bytearray | memoryview):
        return {"b64": base64.b64encode(bytes(v)).decode()}
    if isinstance(v, dict):
        if all(isinstance(k, str) for k in v):
            return {"d": {k: encode(x) for k, x in v.items()}}
        return {"p": [[encode(k), encode(x)] for k, x in v.items()]}
    if isinstance(v, list | tuple):
        return [encode(x) for x in v]
    return v


# --- the snapshot's schema (the value checks are pyvmm.snapshot_schema's) ----------------
def _struct_size(ctype: str) -> int:
    from pyvmm.kvm.native import ffi

    return int(ffi.sizeof(ctype))


def check_host(host: Any, name: str) -> None:
    """Refuse a snapshot taken with another pyvmm, on another CPU model or KVM module."""
    here = host_identity()
    for k, what in (("pyvmm", "pyvmm"), ("cpu", "host CPU"), ("kvm", "KVM module")):
        if host[k] != here[k]:
            raise SnapshotError(f"{name} was taken with {what} {host[k]!r}; this is "
                                f"{here[k]!r}: take the snapshot again here")


def _config(v: Any) -> dict[str, Any]:
    from pyvmm.config import IRQCHIP_MODES, MAX_CPUS
    from pyvmm.x86 import layout

    c = obj(v, "config", CONFIG_KEYS)
    mem = integer(c["mem"], "config.mem", PAGE, U64)
    if mem % PAGE:
        raise SchemaError(f"config.mem is {mem}, not a multiple of 4 KiB")
    integer(c["cpus"], "config.cpus", 1, MAX_CPUS)
    if c["irqchip"] not in IRQCHIP_MODES:
        raise SchemaError(f"config.irqchip is {show(c['irqchip'])}, not one of {', '.join(IRQCHIP_MODES)}")
    boolean(c["pit"], "config.pit")
    boolean(c["pc"], "config.pc")
    for k in ("cpu_features", "cmdline", "image", "format"):
        string(c[k], f"config.{k}")
    want = [[gpa, size] for gpa, size in layout.ram_ranges(mem)]
    if c["regions"] != want:
        raise SchemaError(f"config.regions do not match {mem} bytes of RAM")
    return dict(c)


def _vcpu(v: Any, where: str) -> VcpuState:
    from pyvmm.kvm.vcpu import REGS

    d = obj(obj(v, where, ("d",))["d"], where, VCPU_KEYS)
    regs = obj(obj(d["regs"], f"{where}.regs", ("d",))["d"], f"{where}.regs", REGS)
    lapic = _struct_size("struct kvm_lapic_state")
    return VcpuState(
        {k: integer(regs[k], f"{where}.{k}") for k in REGS},
        blob(d["sregs"], f"{where}.sregs", _struct_size("struct kvm_sregs")),
        blob(d["fpu"], f"{where}.fpu", _struct_size("struct kvm_fpu")),
        opt_blob(d["xsave"], f"{where}.xsave", _struct_size("struct kvm_xsave"), MAX_XSAVE),
        int_map(d["xcrs"], f"{where}.xcrs", MAX_XCRS, U32),
        opt_blob(d["lapic"], f"{where}.lapic", lapic),
        int_map(d["msrs"], f"{where}.msrs", MAX_MSRS, U32),
        blob(d["events"], f"{where}.events", _struct_size("struct kvm_vcpu_events")),
        integer(d["mp_state"], f"{where}.mp_state", 0, MAX_MP_STATE),
        opt_blob(d["debugregs"], f"{where}.debugregs", _struct_size("struct kvm_debugregs")))


def _ram(v: Any, config: dict[str, Any], data_start: int, size: int) -> list[tuple[int, int, int]]:
    """``[(gpa, length, offset)]``: one per RAM region of the machine, each page-aligned
    and wholly inside the file (a region past the file's end would SIGBUS the VMM)."""
    out = []
    for i, entry in enumerate(array(v, "ram", len(config["regions"])), ):
        gpa, length, off = array(entry, f"ram[{i}]", 3)
        want_gpa, want_len = config["regions"][i]
        if gpa != want_gpa or length != want_len:
            raise SchemaError(f"ram[{i}] is {show(gpa)}+{show(length)}, not the machine's "
                       f"{want_gpa:#x}+{want_len:#x}")
        if type(off) is not int or off % PAGE or off < data_start or off + length > size:
            raise SnapshotError(f"RAM at offset {show(off)} of {length} bytes is past the "
                                f"metadata or the end of the {size}-byte file")
        out.append((gpa, length, off))
    return out


def check(meta: Any, name: str, size: int, data_start: int,
          host: bool) -> tuple[Snapshot, list[tuple[int, int, int]]]:
    """The whole metadata against the schema; a Snapshot (RAM not attached yet) and the
    RAM layout ``[(gpa, length, offset)]``.  SnapshotError names what is wrong."""

    try:
        m = obj(meta, "metadata", ("host", "config", "vcpus", "irqchips", "pit", "clock",
                                    "devices", "ram"))
        hid = obj(m["host"], "host", HOST_KEYS)
        for k in HOST_KEYS:
            string(hid[k], f"host.{k}")
        if host:
            check_host(hid, name)
        config = _config(m["config"])
        vcpus = [_vcpu(v, f"vcpus[{i}]")
                 for i, v in enumerate(array(m["vcpus"], "vcpus", most=1 << 16))]
        if len(vcpus) != config["cpus"]:
            raise SnapshotError(f"{name} is corrupt ({len(vcpus)} vCPU states for "
                                f"{config['cpus']} vCPUs)")
        kernel = config["irqchip"] == "kernel"
        chip = _struct_size("struct kvm_irqchip")
        chips = [blob(c, f"irqchips[{i}]", chip)
                 for i, c in enumerate(array(m["irqchips"], "irqchips", 3 if kernel else 0))]
        pit = opt_blob(m["pit"], "pit", _struct_size("struct kvm_pit_state2"))
        if (pit is not None) != (config["pit"] and kernel):
            raise SchemaError("pit state and config.pit disagree")
        clock = opt_blob(m["clock"], "clock", _struct_size("struct kvm_clock_data"))
        devices = state_value(m["devices"], "devices")
        if type(devices) is not dict or not all(type(s) is dict for s in devices.values()):
            raise SchemaError("devices is not an object of device states")
        ram = _ram(m["ram"], config, data_start, size)
    except SchemaError as e:
        raise SnapshotError(f"{name} is corrupt ({e})") from None
    except SnapshotError as e:
        if str(e).startswith(name):
            raise
        raise SnapshotError(f"{name} is truncated or corrupt ({e})") from None
    return Snapshot(config, vcpus, chips, pit, clock, devices, [], trusted=False), ram


# --- reading -----------------------------------------------------------------------------
#: metadata this process has checked, by its exact bytes, the file's size and whether the
#: host was checked: a harness cloning thousands of times from one file parses and checks
#: it once.  The key is the bytes themselves, never a timestamp or an inode: a file changed
#: between two reads (by one byte) is checked again from scratch.
_CHECKED: dict[tuple[bytes, int, bool], tuple[Snapshot, list[tuple[int, int, int]], bytes]] = {}
_CHECKED_LOCK = threading.Lock()
#: how many files' metadata are kept, and the largest kept (a hello's is ~10 KiB)
CHECKED_ENTRIES = 8
CHECKED_MAX_BYTES = 1 << 20


def checked_metadata(raw: bytes, name: str, size: int,
                     host: bool) -> tuple[Snapshot, list[tuple[int, int, int]]]:
    """:func:`check` of the metadata ``raw`` read from a file of ``size`` bytes, or a copy of
    what an earlier check of the same bytes found (every mutable part copied: a caller that
    edits its snapshot cannot change what the next read of the file gives)."""
    key = (raw, size, host)
    hit = _CHECKED.get(key)
    if hit is None:
        snap, layout = check(_metadata(raw, name), name, size, HEADER.size + len(raw), host)
        if len(raw) <= CHECKED_MAX_BYTES:
            # checked data is only dicts, lists, bytes, str, numbers, bools and None:
            # marshal's round trip is a deep copy at C speed
            frozen = marshal.dumps((snap.config, snap.devices))
            snap._templates = {}
            with _CHECKED_LOCK:  # clone loops may run in threads
                if len(_CHECKED) >= CHECKED_ENTRIES:
                    del _CHECKED[next(iter(_CHECKED))]  # the oldest
                _CHECKED[key] = (_copy_snapshot(snap, frozen), layout, frozen)
        return snap, layout
    kept, layout, frozen = hit
    return _copy_snapshot(kept, frozen), layout


def _copy_snapshot(s: Snapshot, frozen: bytes) -> Snapshot:
    """A checked snapshot (no RAM yet) whose containers are its own; ``frozen`` is its
    config and device states, marshalled."""
    vcpus = [VcpuState(dict(v.regs), v.sregs, v.fpu, v.xsave, dict(v.xcrs), v.lapic,
                       dict(v.msrs), v.events, v.mp_state, v.debugregs) for v in s.vcpus]
    config, devices = marshal.loads(frozen)
    return Snapshot(config, vcpus, list(s.irqchips), s.pit, s.clock, devices, [],
                    trusted=s.trusted, _templates=s._templates)


class _NotANumber(ValueError):
    pass


def _refuse_constant(token: str) -> Any:
    raise _NotANumber(token)


def _metadata(raw: bytes, name: str) -> Any:
    try:
        return json.loads(raw, parse_constant=_refuse_constant)
    except RecursionError:
        raise SnapshotError(f"{name} is corrupt (its metadata nests too deep)") from None
    except _NotANumber as e:
        raise SnapshotError(f"{name} is corrupt (its metadata has {e}, which is not a JSON "
                            "number)") from None
    except (ValueError, UnicodeDecodeError):
        raise SnapshotError(f"{name} is corrupt (its metadata is not JSON)") from None


def read(path: str | os.PathLike[str], *, check_host: bool = True, map_ram: bool = True) -> Snapshot:
    """Read and check a snapshot file; its RAM stays in the file, mapped copy-on-write.
    The snapshot keeps the file open (a clone maps its RAM from it) until ``close()``.
    ``map_ram=False``: the snapshot's ``ram`` stays empty, for a clone that maps the file
    itself (:func:`ram_file`) and never restores the snapshot again."""
    name = os.fsdecode(path)
    try:  # O_NONBLOCK: a FIFO must not block the open; it is refused below
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise SnapshotError(f"cannot open snapshot {name}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise SnapshotError(f"{name} is not a regular file, so not a pyvmm snapshot")
        size = st.st_size
        head = os.pread(fd, HEADER.size, 0)
        if len(head) < HEADER.size or head[:8] != MAGIC:
            raise SnapshotError(f"{name} is not a pyvmm snapshot")
        _, version, _, meta_len = HEADER.unpack(head)
        if version != FORMAT_VERSION:
            raise SnapshotError(f"{name} is snapshot format {version}; this pyvmm reads format "
                                f"{FORMAT_VERSION}")
        if meta_len > min(MAX_METADATA, size - HEADER.size):
            raise SnapshotError(f"{name} is truncated or corrupt (metadata of {meta_len} bytes)")
        raw = os.pread(fd, meta_len, HEADER.size)
        if len(raw) != meta_len:
            raise SnapshotError(f"{name} is truncated or corrupt (metadata of {meta_len} bytes)")
        snap, layout = checked_metadata(raw, name, size, check_host)
        mapping = None
        if map_ram:
            try:
                mapping = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
            except OSError as e:
                raise SnapshotError(f"cannot map snapshot {name}: {e.strerror}") from None
    except BaseException:
        os.close(fd)
        raise
    if mapping is not None:
        view = memoryview(mapping)
        snap.ram = [(gpa, view[off:off + length]) for gpa, length, off in layout]
        del view
    snap._mapping, snap._fd = mapping, fd
    snap.config["file"] = name
    snap.config["ram_offsets"] = [off for _, _, off in layout]
    return snap


def ram_file(snap: Snapshot) -> tuple[int, list[int]] | None:
    """``(fd, offsets)`` to map a clone's RAM from the snapshot's file, after checking the
    file still holds every region (it may have been truncated since it was read)."""
    if snap._fd < 0:
        return None
    offsets: list[int] = snap.config["ram_offsets"]
    size = os.fstat(snap._fd).st_size
    for (_, length), off in zip(snap.config["regions"], offsets, strict=True):
        if off + length > size:  # (the file's lengths are the regions', checked at read)
            raise SnapshotError(f"{snap.config['file']} was truncated after it was read")
    return snap._fd, list(offsets)


# --- writing -----------------------------------------------------------------------------
def _destination(name: str) -> str:
    """Where to write: ``name``, or the regular file a symlink there points to.  Anything
    else (a device node, a FIFO, a directory) is refused: renaming over it would replace it."""
    try:
        st = os.stat(name)
    except FileNotFoundError:
        return name
    except OSError as e:
        raise SnapshotError(f"cannot write the snapshot to {name}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise SnapshotError(f"cannot write the snapshot to {name}: not a regular file (a "
                            "snapshot replaces only a regular file)")
    return os.path.realpath(name) if os.path.islink(name) else name


def _write_ram(fd: int, data: memoryview, off: int, start: int = 0, n: int | None = None) -> None:
    """``data[start:start+n]`` at ``off + start``, skipping all-zero pages (holes); runs of
    pages in one write."""
    zero = bytes(64 * PAGE)
    n = len(data) if n is None else start + n
    p = start
    while p < n:
        chunk = data[p:min(p + len(zero), n)]
        if chunk == zero[:len(chunk)]:
            p += len(chunk)
            continue
        run_start = -1
        for q in range(p, p + len(chunk), PAGE):
            page = data[q:q + PAGE]
            if page == zero[:len(page)]:
                if run_start >= 0:
                    os.pwrite(fd, data[run_start:q], off + run_start)
                    run_start = -1
            elif run_start < 0:
                run_start = q
        if run_start >= 0:
            os.pwrite(fd, data[run_start:p + len(chunk)], off + run_start)
        p += len(chunk)


def write(snap: Snapshot, path: str | os.PathLike[str],
          extents: list[list[tuple[int, int]] | None] | None = None) -> None:
    """Write ``snap`` to ``path``, replaced atomically (see the module docstring).
    ``extents`` (per RAM region: ``[(offset, length)]`` that may hold data, or None for
    all of it) limits what is read of RAM to what a machine ever wrote."""
    name = os.fsdecode(path)
    target = _destination(name)
    meta: dict[str, Any] = {"host": host_identity(), "config": {k: snap.config[k] for k in CONFIG_KEYS},
                            "vcpus": [encode(vars(s)) for s in snap.vcpus],
                            "irqchips": encode(snap.irqchips), "pit": encode(snap.pit),
                            "clock": encode(snap.clock), "devices": encode(snap.devices)}
    probe = json.dumps({**meta, "ram": [[U64, U64, U64]] * len(snap.ram)}).encode()
    offset = (HEADER.size + len(probe) + PAGE - 1) & ~(PAGE - 1)
    layout = []
    for gpa, data in snap.ram:
        layout.append([gpa, len(data), offset])
        offset += (len(data) + PAGE - 1) & ~(PAGE - 1)
    meta["ram"] = layout
    body = json.dumps(meta).encode()
    tmp = f"{target}.{os.getpid()}.tmp"
    fd = -1
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        os.pwrite(fd, HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(body)) + body, 0)
        for i, ((_, data), (_, _, off)) in enumerate(zip(snap.ram, layout, strict=True)):
            view = memoryview(data).cast("B")
            ranges = extents[i] if extents is not None else None
            for start, n in ranges if ranges is not None else [(0, len(view))]:
                _write_ram(fd, view, off, start, n)
        os.ftruncate(fd, offset)
        os.close(fd)
        fd = -1
        os.replace(tmp, target)
    except BaseException as e:  # an error, or a signal (Interrupted, KeyboardInterrupt)
        if fd >= 0:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise SnapshotError(f"cannot write the snapshot to {name}: {e.strerror}") from None
        raise
