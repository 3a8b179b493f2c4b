"""Running one vCPU: the C loop (``cbindings/runloop.c``) and a plain Python loop.

:class:`VcpuLoop` owns a ``struct pyvmm_loop``, fills its fast exit table from the bus's
:class:`~pyvmm.devices.fastpath.FastEntry` list, and hands every exit the table does not
cover to :func:`pyvmm.vstate.exits.handle_exit`.  :meth:`VcpuLoop.run_python` does the
same with KVM_RUN issued from Python for every exit, so the two can be benchmarked against
each other.  Like every user of the cffi extension it takes ``ffi`` and ``lib`` from
:mod:`pyvmm.kvm.native`, the extension's one door.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence

from pyvmm.devices.base import VcpuContext, all_ones
from pyvmm.devices.bus import Bus, GuestStop
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, FastOwner, Space
from pyvmm.devices.msr import MsrHandlers
from pyvmm.errors import GuestIoError
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.native import ffi, lib
from pyvmm.kvm.run import exit_name
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.vstate.exits import IO_SIZES, handle_exit, stop_outcome
from pyvmm.vstate.result import Outcome, RunStatus

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.vstate.trace import TraceRing

# fastpath.py writes runloop.h's numbers down for devices; they must be the compiled ones
assert (Space.PIO, Space.MMIO, READ, WRITE) == (lib.PYVMM_SPACE_PIO, lib.PYVMM_SPACE_MMIO,
                                                lib.PYVMM_DIR_READ, lib.PYVMM_DIR_WRITE)
assert [int(a) for a in Action] == [lib.PYVMM_ACT_SINK, lib.PYVMM_ACT_BUFFER,
                                    lib.PYVMM_ACT_STOP, lib.PYVMM_ACT_COUNTER, lib.PYVMM_ACT_CLOCK]

_EINTR, _EAGAIN = -4, -11
#: struct kvm_run's io member: direction, size, port, count, data_offset (checked below)
_IO_VIEW = struct.Struct("<BBHIQ")
assert _IO_VIEW.size == ffi.sizeof("struct pyvmm_run_io")
#: struct pyvmm_fast_entry: base, len, read_value, last_value, hits, space, dirs, action,
#: enabled, pad, clock_hz, clock_mask (packed whole: a dozen cffi field writes cost more)
_ENTRY = struct.Struct("<5Q4BI2Q")
_ENTRY_FIELDS = (("base", 0), ("len", 8), ("read_value", 16), ("last_value", 24), ("hits", 32),
                 ("space", 40), ("dirs", 41), ("action", 42), ("enabled", 43), ("pad", 44),
                 ("clock_hz", 48), ("clock_mask", 56))
if (_ENTRY.size != ffi.sizeof("struct pyvmm_fast_entry")
        or any(ffi.offsetof("struct pyvmm_fast_entry", f) != off for f, off in _ENTRY_FIELDS)):
    raise ImportError("struct pyvmm_fast_entry (cbindings/runloop.h) no longer matches "
                      "pyvmm/vstate/loop.py's _ENTRY: change both together")
#: the claimed-ports bitmap per set of claimed PIO ranges, shared by every loop with that
#: set (the C loop only reads it; every machine has the same few devices, and building
#: and copying 8 KiB per loop cost more than the rest of a loop's set-up)
_PORT_BITMAPS: dict[tuple[tuple[int, int], ...], Any] = {}
_PORT_BITMAPS_MAX = 64
MAX_ENTRIES = int(lib.PYVMM_MAX_ENTRIES)

_kick_installed = False
_kick_lock = threading.Lock()


def install_kick_handler() -> None:
    """Install the no-op handler for the kick signal once per process (see runloop.c)."""
    global _kick_installed
    with _kick_lock:
        if not _kick_installed:
            if lib.pyvmm_install_kick_handler() < 0:
                raise OSError("cannot install the vCPU kick signal handler")
            _kick_installed = True


def _native_id() -> int:
    """The calling thread's TID: the one its Thread object keeps (threading.get_native_id
    is a gettid syscall each time, and every run asks)."""
    thread = threading.current_thread()
    if thread.native_id is None or isinstance(thread, threading._DummyThread):
        # a thread threading did not start: its object may be an earlier thread's whose
        # TID was reused (3.11 keeps dummy threads), so ask the kernel
        return threading.get_native_id()
    return thread.native_id


def port_bitmap(ranges: tuple[tuple[int, int], ...]) -> Any:
    """The C loop's claimed-ports bitmap (bit ``port & 7`` of byte ``port >> 3``, a
    ``uint8_t[8192]``) for ``ranges`` of ``(base, length)``: one per set of ranges, never
    written once made (loops share it)."""
    bitmap = _PORT_BITMAPS.get(ranges)
    if bitmap is None:
        bits = 0
        for base, length in ranges:
            end = min(base + length, 65536)
            if end > base:
                bits |= ((1 << (end - base)) - 1) << base
        bitmap = ffi.new("uint8_t[]", 65536 // 8)
        ffi.memmove(bitmap, bits.to_bytes(65536 // 8, "little"), 65536 // 8)
        if len(_PORT_BITMAPS) >= _PORT_BITMAPS_MAX:
            _PORT_BITMAPS.clear()  # loops keep theirs alive (VcpuLoop._claimed_ports)
        _PORT_BITMAPS[ranges] = bitmap
    return bitmap


def entry_record(fe: FastEntry) -> bytes:
    """``fe`` as the C table's ``struct pyvmm_fast_entry`` (hits and last value 0);
    OverflowError for a value its field cannot hold, as cffi would raise."""
    try:
        return _ENTRY.pack(fe.base, fe.length, fe.read_value, 0, 0, int(fe.space), fe.dirs,
                           int(fe.action), int(fe.enabled), 0, fe.clock_hz, fe.clock_mask)
    except struct.error as e:
        raise OverflowError(f"fast entry of {fe.owner.name} at {fe.base:#x}: {e}") from None


class FastTableFull(RuntimeError):
    """More fast-path entries than the C table holds (a VMM limit, PYVMM_MAX_ENTRIES)."""


class VcpuLoop:
    """The run loop for one vCPU, bound to the bus the VM's devices live on."""

    BUF_CAP = 4096

    def __init__(self, vcpu: Vcpu, bus: Bus, msrs: MsrHandlers) -> None:
        if not _kick_installed:
            install_kick_handler()
        self.vcpu = vcpu
        self.bus = bus
        self.msrs = msrs
        self.ctx = VcpuContext(vcpu.id, vcpu.sync_regs)
        #: the host threads (TIDs) that have run this vCPU (pyvmm.kvmtrace maps KVM's
        #: events to vCPUs by them)
        self.threads: set[int] = set()
        self._buf = ffi.new("uint8_t[]", self.BUF_CAP)
        self.c: Any = ffi.new("struct pyvmm_loop *", {  # the fields in one call
            "vcpu_fd": vcpu.fd, "run": vcpu.kvm_run, "run_size": vcpu.run_size,
            "buf": self._buf, "buf_cap": self.BUF_CAP, "buf_flush_at": self.BUF_CAP - 64,
            "buf_flush_newline": 1})
        self._entries_base = ffi.cast("uint8_t *", self.c.entries)  # the table's bytes
        self.entries: list[FastEntry] = []
        self._reported: list[int] = []
        self._buffer_owner: FastOwner | None = None
        self.py_exit_counts: Counter[int] = Counter()
        #: called on this vCPU's thread with every debug exit's outcome; True: go on
        #: running (a debugger filtering single steps, e.g. emulated watchpoints)
        self.on_debug: Callable[[Outcome], bool] | None = None
        self.trace: TraceRing | None = None
        self.py_kvm_runs = 0
        self.add_fast_entries(bus.fast_entries)
        #: every claimed-ports bitmap the C loop pointed at, the current last: a vCPU thread
        #: may still read through an old pointer (a few per loop: one per device added)
        self._claimed_ports: list[Any] = []
        self.sync_claims()

    def enable_trace(self, capacity: int) -> TraceRing:
        """Have the C loop record every exit into a ring of ``capacity`` records."""
        from pyvmm.vstate.trace import TraceRing

        if self.trace is None:
            self.trace = TraceRing(self.c, self.vcpu.id, capacity)
        return self.trace

    def sync_claims(self) -> None:
        """Tell the C loop which ports and MMIO ranges have devices, so that it can answer
        accesses to the others itself (all-ones, counted) unless the bus is strict."""
        with self.bus.lock:  # two syncs at once must not leave the older bitmap current
            bitmap = port_bitmap(self.bus.claims(Space.PIO))
            if not self._claimed_ports or self._claimed_ports[-1] is not bitmap:
                self._claimed_ports.append(bitmap)
            self.c.claimed_ports = bitmap
        mmio = self.bus.claims(Space.MMIO)
        if len(mmio) > MAX_ENTRIES:
            self.c.answer_unclaimed = 0  # too many ranges to mirror: Python decides
            return
        for i, (base, length) in enumerate(mmio):
            self.c.claimed_mmio[i][0], self.c.claimed_mmio[i][1] = base, length
        self.c.n_claimed_mmio = len(mmio)
        self.c.answer_unclaimed = 0 if self.bus.strict else 1

    # --- the fast table --------------------------------------------------------
    def add_fast_entry(self, fe: FastEntry) -> int:
        """Copy ``fe`` into the C table; returns its index."""
        return self.add_fast_entries((fe,))

    def add_fast_entries(self, fes: Sequence[FastEntry]) -> int:
        """Copy ``fes`` into the C table at once (every check first: all or none); returns
        the index of the first."""
        n = len(self.entries)
        owner = self._buffer_owner
        for i, fe in enumerate(fes):
            if n + i >= MAX_ENTRIES:
                raise FastTableFull(f"fast exit table full ({MAX_ENTRIES} entries); "
                                    f"{fe.owner.name} at {fe.base:#x} does not fit")
            if fe.action is Action.BUFFER:
                if owner not in (None, fe.owner):
                    raise FastTableFull("only one byte-buffer device per vCPU")
                owner = fe.owner
        records = b"".join([entry_record(fe) for fe in fes])
        ffi.memmove(self._entries_base + n * _ENTRY.size, records, len(records))
        self._buffer_owner = owner
        self.entries += fes
        self._reported += [0] * len(fes)
        self.c.n_entries = n + len(fes)
        return n

    def sync_fast_entry(self, fe: FastEntry, only_if_changed: bool = False) -> None:
        """Re-read ``fe.enabled``/``read_value`` after a device changed them (with
        ``only_if_changed``, compare first: reads of the C table are cheaper than writes)."""
        for i, mine in enumerate(self.entries):
            if mine is fe:
                e = self.c.entries[i]
                if only_if_changed and e.enabled == int(fe.enabled) and e.read_value == fe.read_value:
                    return
                e.enabled = int(fe.enabled)
                e.read_value = fe.read_value

    def fast_hits(self) -> dict[str, int]:
        """Exits answered in C, per device and port (entries of one device at one base
        are added up)."""
        out: Counter[str] = Counter()
        for i, e in enumerate(self.entries):
            out[f"{e.owner.name}@{e.base:#x}"] += int(self.c.entries[i].hits)
        return dict(out)

    # --- control ---------------------------------------------------------------
    def kick(self) -> None:
        """Stop this vCPU as soon as possible, wherever it is (signal + immediate_exit)."""
        lib.pyvmm_loop_kick(self.c)

    def request_flush(self) -> None:
        """If C holds a partial line of output, have it handed to Python now."""
        if self.c.buf_len:
            lib.pyvmm_loop_request_flush(self.c)

    def reset_kick(self) -> None:
        self.c.stop_requested = 0
        self.vcpu.kvm_run.immediate_exit = 0

    def drain(self) -> None:
        """Hand what the C loop buffered to the buffer's device (the UART)."""
        n = int(self.c.buf_len)
        if n:
            data = bytes(ffi.buffer(self._buf, n))
            self.c.buf_len = 0
            if self._buffer_owner is not None:
                self._buffer_owner.fast_event(data)

    def collect(self) -> None:
        """After a run: buffered output to its device, the C loop's unclaimed-access counts
        to the bus's tally, and what C answered to each entry's device."""
        self.drain()
        for i in range(int(self.c.n_unclaimed_pio)):
            port, n = int(self.c.unclaimed_pio[i][0]), int(self.c.unclaimed_pio[i][1])
            self.bus.count_unclaimed(Space.PIO, port, n)
        self.c.n_unclaimed_pio = 0
        for i in range(int(self.c.n_unclaimed_mmio)):
            addr, n = int(self.c.unclaimed_mmio[i][0]), int(self.c.unclaimed_mmio[i][1])
            self.bus.count_unclaimed(Space.MMIO, addr, n)
        self.c.n_unclaimed_mmio = 0
        for i, fe in enumerate(self.entries):
            hits = int(self.c.entries[i].hits)
            if hits != self._reported[i]:
                fe.owner.fast_hits(fe, hits - self._reported[i], int(self.c.entries[i].last_value))
                self._reported[i] = hits

    def exit_counts(self) -> dict[str, int]:
        """Exits by reason name, from the C counters plus the Python loop's."""
        out: Counter[str] = Counter()
        for reason, n in enumerate(memoryview(ffi.buffer(self.c.exit_counts)).cast("Q")):
            if n:
                out[exit_name(reason)] += n
        for reason, n in self.py_exit_counts.items():
            out[exit_name(reason)] += n
        return dict(out)

    @property
    def kvm_runs(self) -> int:
        """KVM_RUN ioctls issued, by either loop."""
        return int(self.c.kvm_runs) + self.py_kvm_runs

    def _kicked(self) -> Outcome:
        return Outcome(RunStatus.KICKED, self.vcpu.id, reason="stopped by the VMM")

    # --- running ---------------------------------------------------------------
    def run(self) -> Outcome:
        """Run in C until an outcome; slow exits are handled here in between."""
        c = self.c
        self.threads.add(_native_id())
        lib.pyvmm_loop_bind_thread(c)
        try:
            while True:
                r = lib.pyvmm_loop_run(c)
                self.drain()
                if r == lib.PYVMM_RET_BUFFER:
                    continue
                if r == lib.PYVMM_RET_EXIT:
                    out = handle_exit(self.vcpu.kvm_run, self.vcpu.run_size, self.ctx, self.bus,
                                      self.msrs)
                    if out is None:
                        continue
                    if out.kind == RunStatus.DEBUG and self.on_debug is not None and self.on_debug(out):
                        continue
                    return out
                if r == lib.PYVMM_RET_STOP:
                    owner = self.entries[c.stop_entry].owner
                    value = int(c.stop_value)
                    return Outcome(RunStatus.EXIT, self.vcpu.id, value, f"{owner.name} wrote {value:#x}")
                if r == lib.PYVMM_RET_KICKED:
                    return self._kicked()
                return Outcome(RunStatus.ERROR, self.vcpu.id,
                               reason=str(KvmError("KVM_RUN", int(c.last_errno))))
        finally:
            lib.pyvmm_loop_unbind_thread(c)

    def run_python(self) -> Outcome:
        """The same loop with KVM_RUN issued from Python and every exit handled here.

        PIO exits take an inlined path (cached views of kvm_run, a port -> device cache)
        so that the comparison with the C loop measures the language, not sloppiness.
        """
        self.threads.add(_native_id())
        fd = self.vcpu.fd
        run = self.vcpu.kvm_run
        io = lib.pyvmm_run_io(run)
        window = ffi.buffer(ffi.cast("uint8_t *", run), self.vcpu.run_size)
        # exit_reason and the whole io view in one unpack: each cffi field read costs more
        # than the struct call (offsets from the compiled header, not written by hand)
        reason_at = ffi.offsetof("struct kvm_run", "exit_reason")
        io_at = int(ffi.cast("uintptr_t", io)) - int(ffi.cast("uintptr_t", run))
        unpack_reason = struct.Struct("<I").unpack_from
        unpack_io = _IO_VIEW.unpack_from
        window_len = len(window)
        ioctl, KVM_RUN, NULL = lib.pyvmm_ioctl, lib.KVM_RUN, ffi.NULL
        EXIT_IO, OUT = lib.KVM_EXIT_IO, lib.KVM_EXIT_IO_OUT
        counts = [0] * int(lib.PYVMM_MAX_REASONS)
        n_reasons = len(counts)
        ports: dict[int, Any] = {}
        bus, c, lock, ctx, vid = self.bus, self.c, self.bus.lock, self.ctx, self.vcpu.id
        runs = 0
        lib.pyvmm_loop_bind_thread(c)
        try:
            while True:
                if c.stop_requested:
                    return self._kicked()
                runs += 1
                r = ioctl(fd, KVM_RUN, NULL)
                if r < 0:
                    if r in (_EINTR, _EAGAIN):  # a kick, a stray signal, an AP not yet started
                        counts[lib.KVM_EXIT_INTR] += 1
                        continue
                    return Outcome(RunStatus.ERROR, vid, reason=str(KvmError("KVM_RUN", -r)))
                reason = unpack_reason(window, reason_at)[0]
                counts[reason if reason < n_reasons else 0] += 1
                if reason == EXIT_IO:
                    direction, size, port, count, off = unpack_io(window, io_at)
                    if count != 1:
                        out = handle_exit(run, self.vcpu.run_size, ctx, bus, self.msrs)
                        if out is None:
                            continue
                        return out
                    hit: Any = ports.get(port * 8 + size)
                    if hit is None:  # (device, offset into its range), or the bus: unclaimed
                        found = bus.lookup(Space.PIO, port, size)
                        hit = ports[port * 8 + size] = (found[1], port - found[0]) if found else bus
                    if hit is not bus and size in IO_SIZES and off + size <= window_len:
                        dev, at = hit
                        try:
                            with lock:
                                if direction == OUT:
                                    dev.write(at, size, int.from_bytes(window[off:off + size], "little"),
                                              ctx)
                                else:
                                    window[off:off + size] = (dev.read(at, size, ctx) & (
                                        all_ones(size))).to_bytes(size, "little")
                        except GuestStop as stop:
                            return stop_outcome(stop, vid)
                        except GuestIoError as e:
                            return Outcome(RunStatus.IO_ERROR, vid, reason=str(e), exit_reason=reason)
                        continue
                out = handle_exit(run, self.vcpu.run_size, ctx, bus, self.msrs)
                if out is not None:
                    if out.kind == RunStatus.DEBUG and self.on_debug is not None and self.on_debug(out):
                        continue
                    return out
        finally:
            lib.pyvmm_loop_unbind_thread(c)
            self.py_kvm_runs += runs
            for reason, n in enumerate(counts):
                if n:
                    self.py_exit_counts[reason] += n
