"""Running a vCPU: the C loop (``cbindings/runloop.c``) and a plain Python loop.

:class:`VcpuLoop` owns a ``struct pyvmm_loop``, fills its fast exit table from the bus's
:class:`FastEntry` list, and turns what comes back into an :class:`Outcome`.  Exits the
table does not cover are decoded here (PIO, MMIO) and dispatched to the :class:`Bus`;
exits that end the run (shutdown, emulation failure, ...) become outcomes with the reason.
:meth:`VcpuLoop.run_python` does the same with KVM_RUN issued from Python for every
exit, so the two paths can be benchmarked against each other.
"""

from __future__ import annotations

import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from pyvmm._native import ffi, lib
from pyvmm.devices.bus import Action, Bus, FastEntry, GuestStop, Space, UnclaimedIoError, all_ones
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.exits import exit_name
from pyvmm.kvm.vcpu import Vcpu

_current = threading.local()
_NO_COUNTS = bytes(65536 * 4)
_NONZERO = re.compile(b"[^\x00]")


def current_loop() -> VcpuLoop | None:
    """The VcpuLoop running on this thread: lets a device handler see which vCPU exited
    (and its registers in kvm_run->s.regs)."""
    return getattr(_current, "loop", None)


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


@dataclass
class Outcome:
    """Why a vCPU stopped.

    ``kind``: ``exit`` (debug-exit value in ``code``), ``shutdown`` (guest powered off),
    ``crash`` (triple fault, emulation failure, internal error, failed entry), ``io-error``
    (strict I/O or a bad guest access), ``kicked`` (stopped from outside), ``error``
    (KVM_RUN failed).
    """

    kind: str
    vcpu: int
    code: int | None = None
    reason: str = ""
    exit_reason: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


def stop_outcome(stop: GuestStop, vcpu: int) -> Outcome:
    """A device ended the run: debug-exit -> ``exit``; ``done``/``assert``/``exception``
    (test protocol) keep their name; anything else is a ``shutdown``."""
    kind = {"debug-exit": "exit", "done": "done", "assert": "assert", "exception": "assert",
            "error": "assert"}.get(stop.reason, "shutdown")
    out = Outcome(kind, vcpu, stop.code, stop.reason)
    event = getattr(stop, "event", None)
    if event is not None:
        out.reason = event.describe()
        out.details["event"] = event
    return out


_CRASH_EXITS = {
    "SHUTDOWN": "triple fault (KVM_EXIT_SHUTDOWN)",
    "FAIL_ENTRY": "VM entry failed (KVM_EXIT_FAIL_ENTRY)",
    "INTERNAL_ERROR": "KVM internal error",
    "EXCEPTION": "unhandled exception (KVM_EXIT_EXCEPTION)",
    "NMI": "unexpected NMI exit",
    "UNKNOWN": "unknown exit (KVM_EXIT_UNKNOWN)",
}
_INTERNAL = {
    lib.KVM_INTERNAL_ERROR_EMULATION: "emulation failure: KVM cannot emulate the instruction",
    lib.KVM_INTERNAL_ERROR_SIMUL_EX: "simultaneous exceptions",
    lib.KVM_INTERNAL_ERROR_DELIVERY_EV: "exit while delivering an event",
    lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: "unexpected hardware exit reason",
}
_IO_SIZES = (1, 2, 4)


class VcpuLoop:
    """The run loop for one vCPU, bound to the bus the VM's devices live on."""

    BUF_CAP = 4096

    def __init__(self, vcpu: Vcpu, bus: Bus) -> None:
        install_kick_handler()
        self.vcpu = vcpu
        self.bus = bus
        self.c = ffi.new("struct pyvmm_loop *")
        self.c.vcpu_fd = vcpu.fd
        self.c.run = vcpu.kvm_run
        self.c.run_size = vcpu.run_size
        self._buf = ffi.new("uint8_t[]", self.BUF_CAP)
        self.c.buf = self._buf
        self.c.buf_cap = self.BUF_CAP
        self.c.buf_flush_at = self.BUF_CAP - 64
        self.c.buf_flush_newline = 1
        self.entries: list[FastEntry] = []
        self._buffer_owner: Any = None
        self.py_exit_counts: Counter[int] = Counter()
        for fe in bus.fast_entries:
            self.add_fast_entry(fe)
        self._claimed_ports = ffi.new("uint8_t[]", 65536 // 8)
        self._unclaimed_pio = ffi.new("uint32_t[]", 65536)
        self.c.claimed_ports = self._claimed_ports
        self.c.unclaimed_pio = self._unclaimed_pio
        self.sync_claims()

    def sync_claims(self) -> None:
        """Tell the C loop which ports and MMIO ranges have devices, so that it can answer
        accesses to the others itself (all-ones, counted) unless the bus is strict."""
        ffi.memmove(self._claimed_ports, bytes(65536 // 8), 65536 // 8)
        for base, length in self.bus.claimed(Space.PIO):
            for port in range(base, min(base + length, 65536)):
                self._claimed_ports[port >> 3] |= 1 << (port & 7)
        mmio = self.bus.claimed(Space.MMIO)
        if len(mmio) > lib.PYVMM_MAX_ENTRIES:
            self.c.answer_unclaimed = 0  # too many ranges to mirror: Python decides
            return
        for i, (base, length) in enumerate(mmio):
            self.c.claimed_mmio[i][0], self.c.claimed_mmio[i][1] = base, length
        self.c.n_claimed_mmio = len(mmio)
        self.c.answer_unclaimed = 0 if self.bus.strict else 1

    def collect_unclaimed(self) -> None:
        """Move the C loop's unclaimed-access counts into the bus's tally (and reset them)."""
        counts = self._unclaimed_pio
        raw = bytes(ffi.buffer(counts, 65536 * 4))
        if raw != _NO_COUNTS:  # C-speed compare; the scan below only runs when needed
            for port in sorted({m.start() // 4 for m in _NONZERO.finditer(raw)}):
                self.bus.count_unclaimed(Space.PIO, port, counts[port])
                counts[port] = 0
        for i in range(self.c.n_unclaimed_mmio):
            addr, n = self.c.unclaimed_mmio[i][0], self.c.unclaimed_mmio[i][1]
            self.bus.count_unclaimed(Space.MMIO, addr, n)
        self.c.n_unclaimed_mmio = 0

    # --- the fast table --------------------------------------------------------
    def add_fast_entry(self, fe: FastEntry) -> int:
        """Copy ``fe`` into the C table; returns its index."""
        n = self.c.n_entries
        if n >= lib.PYVMM_MAX_ENTRIES:
            raise ValueError("fast exit table full")
        if fe.action is Action.BUFFER:
            if self._buffer_owner not in (None, fe.owner):
                raise ValueError("only one byte-buffer device per vCPU")
            self._buffer_owner = fe.owner
        e = self.c.entries[n]
        e.base, e.len, e.space, e.dirs = fe.base, fe.length, int(fe.space), fe.dirs
        e.action, e.read_value, e.enabled = int(fe.action), fe.read_value, int(fe.enabled)
        self.entries.append(fe)
        self.c.n_entries = n + 1
        return n

    def sync_fast_entry(self, fe: FastEntry) -> None:
        """Re-read ``fe.enabled``/``read_value`` after a device changed them."""
        for i, mine in enumerate(self.entries):
            if mine is fe:
                self.c.entries[i].enabled = int(fe.enabled)
                self.c.entries[i].read_value = fe.read_value

    def fast_hits(self) -> dict[str, int]:
        return {f"{e.owner.name}@{e.base:#x}": self.c.entries[i].hits
                for i, e in enumerate(self.entries)}

    # --- control ---------------------------------------------------------------
    def kick(self) -> None:
        """Stop this vCPU as soon as possible, wherever it is (signal + immediate_exit)."""
        lib.pyvmm_loop_kick(self.c)

    def reset_kick(self) -> None:
        self.c.stop_requested = 0
        self.vcpu.kvm_run.immediate_exit = 0

    def drain(self) -> None:
        """Hand what the C loop buffered to the buffer's device (the UART)."""
        n = self.c.buf_len
        if n:
            data = bytes(ffi.buffer(self._buf, n))
            self.c.buf_len = 0
            if self._buffer_owner is not None:
                self._buffer_owner.fast_event(data)

    def exit_counts(self) -> dict[str, int]:
        """Exits by reason name, from the C counters plus the Python loop's."""
        out: Counter[str] = Counter()
        for reason in range(lib.PYVMM_MAX_REASONS):
            n = self.c.exit_counts[reason]
            if n:
                out[exit_name(reason)] += n
        for reason, n in self.py_exit_counts.items():
            out[exit_name(reason)] += n
        return dict(out)

    # --- running ---------------------------------------------------------------
    def run(self) -> Outcome:
        """Run in C until an outcome; slow exits are handled here in between."""
        c = self.c
        lib.pyvmm_loop_bind_thread(c)
        _current.loop = self
        try:
            while True:
                r = lib.pyvmm_loop_run(c)
                if r == lib.PYVMM_RET_BUFFER:
                    self.drain()
                    continue
                self.drain()
                if r == lib.PYVMM_RET_EXIT:
                    out = self.handle_exit()
                    if out is None:
                        continue
                    return out
                if r == lib.PYVMM_RET_STOP:
                    owner = self.entries[c.stop_entry].owner
                    return Outcome("exit", self.vcpu.id, int(c.stop_value),
                                   f"{owner.name} wrote {int(c.stop_value):#x}")
                if r == lib.PYVMM_RET_KICKED:
                    return Outcome("kicked", self.vcpu.id, reason="stopped by the VMM")
                err = KvmError("KVM_RUN", c.last_errno)
                return Outcome("error", self.vcpu.id, reason=str(err))
        finally:
            lib.pyvmm_loop_unbind_thread(c)
            _current.loop = None

    def run_python(self) -> Outcome:
        """The same loop with KVM_RUN issued from Python and every exit handled here.

        PIO exits take an inlined path (cached views of kvm_run, a port -> device cache)
        so that the comparison with the C loop measures the language, not sloppiness.
        """
        fd = self.vcpu.fd
        run = self.vcpu.kvm_run
        io = lib.pyvmm_run_io(run)
        window = ffi.buffer(ffi.cast("uint8_t *", run), self.vcpu.run_size)
        ioctl, KVM_RUN, NULL = lib.pyvmm_ioctl, lib.KVM_RUN, ffi.NULL
        EXIT_IO, OUT = lib.KVM_EXIT_IO, lib.KVM_EXIT_IO_OUT
        counts = [0] * lib.PYVMM_MAX_REASONS
        ports: dict[int, Any] = {}
        bus, c, lock, vid = self.bus, self.c, self.bus.lock, self.vcpu.id
        lib.pyvmm_loop_bind_thread(c)
        _current.loop = self
        try:
            while True:
                if c.stop_requested:
                    return Outcome("kicked", vid, reason="stopped by the VMM")
                r = ioctl(fd, KVM_RUN, NULL)
                if r < 0:
                    if r == -4:  # EINTR: a kick or a stray signal
                        counts[lib.KVM_EXIT_INTR] += 1
                        continue
                    return Outcome("error", vid, reason=str(KvmError("KVM_RUN", -r)))
                reason = run.exit_reason
                counts[reason if reason < len(counts) else 0] += 1
                if reason == EXIT_IO and io.count == 1:
                    size, port, off = io.size, io.port, io.data_offset
                    dev = ports.get(port * 8 + size)
                    if dev is None:
                        dev = ports[port * 8 + size] = bus.find(Space.PIO, port, size) or bus
                    if dev is not bus and size in _IO_SIZES and off + size <= len(window):
                        try:
                            with lock:
                                if io.direction == OUT:
                                    dev.write(port, size, int.from_bytes(window[off:off + size], "little"))
                                else:
                                    window[off:off + size] = (dev.read(port, size) & (
                                        all_ones(size))).to_bytes(size, "little")
                        except GuestStop as stop:
                            return stop_outcome(stop, vid)
                        continue
                out = self.handle_exit()
                if out is not None:
                    return out
        finally:
            lib.pyvmm_loop_unbind_thread(c)
            _current.loop = None
            for reason, n in enumerate(counts):
                if n:
                    self.py_exit_counts[reason] += n

    def handle_exit(self) -> Outcome | None:
        """Decode the exit in kvm_run; None means "handled, run again"."""
        run = self.vcpu.kvm_run
        reason = run.exit_reason
        try:
            if reason == lib.KVM_EXIT_IO:
                return self._pio(lib.pyvmm_run_io(run))
            if reason == lib.KVM_EXIT_MMIO:
                return self._mmio(lib.pyvmm_run_mmio(run))
            if reason in (lib.KVM_EXIT_X86_RDMSR, lib.KVM_EXIT_X86_WRMSR):
                return self._msr(lib.pyvmm_run_msr(run), reason == lib.KVM_EXIT_X86_WRMSR)
        except GuestStop as stop:
            return stop_outcome(stop, self.vcpu.id)
        except UnclaimedIoError as e:
            return Outcome("io-error", self.vcpu.id, reason=str(e))
        return self._terminal(reason)

    def _pio(self, io: Any) -> Outcome | None:
        size, count, off = io.size, io.count, io.data_offset
        if size not in _IO_SIZES or count == 0 or off + size * count > self.vcpu.run_size:
            return Outcome("crash", self.vcpu.id, reason=f"malformed PIO exit (size {size}, "
                           f"count {count}, offset {off:#x})", exit_reason=lib.KVM_EXIT_IO)
        data = ffi.buffer(ffi.cast("uint8_t *", self.vcpu.kvm_run) + off, size * count)
        port = io.port
        if io.direction == lib.KVM_EXIT_IO_OUT:
            for i in range(count):
                self.bus.write(Space.PIO, port, size,
                               int.from_bytes(data[i * size:(i + 1) * size], "little"))
        else:
            for i in range(count):
                data[i * size:(i + 1) * size] = \
                    self.bus.read(Space.PIO, port, size).to_bytes(size, "little")
        return None

    def _mmio(self, mmio: Any) -> Outcome | None:
        n = mmio.len
        if not 1 <= n <= 8:
            return Outcome("crash", self.vcpu.id, reason=f"malformed MMIO exit (len {n})",
                           exit_reason=lib.KVM_EXIT_MMIO)
        if mmio.is_write:
            value = int.from_bytes(ffi.buffer(mmio.data)[:n], "little")
            self.bus.write(Space.MMIO, mmio.phys_addr, n, value)
        else:
            value = self.bus.read(Space.MMIO, mmio.phys_addr, n)
            ffi.memmove(mmio.data, value.to_bytes(n, "little"), n)
        return None

    def _msr(self, msr: Any, is_write: bool) -> Outcome | None:
        """A userspace MSR exit: call the bus's handler, or make the guest take #GP
        (``error = 1``), as hardware does for an MSR nobody implements."""
        with self.bus.lock:
            read, write = self.bus.msr_handlers.get(msr.index, (None, None))
            handler = write if is_write else read
            if handler is None:
                msr.error = 1
            elif is_write:
                handler(int(msr.data))
                msr.error = 0
            else:
                msr.data = handler() & 0xFFFF_FFFF_FFFF_FFFF
                msr.error = 0
        return None

    def _terminal(self, reason: int) -> Outcome:
        name = exit_name(reason)
        run = self.vcpu.kvm_run
        vid = self.vcpu.id
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            ev = lib.pyvmm_run_system_event(run)
            if ev.type == lib.KVM_SYSTEM_EVENT_SHUTDOWN:
                return Outcome("shutdown", vid, 0, "guest powered off (system event)", reason)
            if ev.type == lib.KVM_SYSTEM_EVENT_RESET:
                return Outcome("crash", vid, reason="guest asked for a reset", exit_reason=reason)
            return Outcome("crash", vid, reason=f"guest crash event (type {ev.type})",
                           exit_reason=reason)
        if reason == lib.KVM_EXIT_HLT:
            return Outcome("crash", vid, reason="guest halted with no way to wake (HLT exit)",
                           exit_reason=reason)
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            ie = lib.pyvmm_run_internal(run)
            text = _INTERNAL.get(ie.suberror, f"suberror {ie.suberror}")
            data = [int(ie.data[i]) for i in range(min(ie.ndata, 16))]
            return Outcome("crash", vid, reason=f"KVM internal error: {text}",
                           exit_reason=reason, details={"suberror": ie.suberror, "data": data})
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            fe = lib.pyvmm_run_fail_entry(run)
            return Outcome("crash", vid, reason=_CRASH_EXITS["FAIL_ENTRY"] +
                           f", hardware reason {fe.hardware_entry_failure_reason:#x}",
                           exit_reason=reason)
        if reason == lib.KVM_EXIT_DEBUG:
            dbg = lib.pyvmm_run_debug(run)
            return Outcome("debug", vid, reason=f"debug exit (exception {dbg.exception}) at "
                           f"{dbg.pc:#x}", exit_reason=reason,
                           details={"pc": dbg.pc, "dr6": dbg.dr6, "exception": dbg.exception})
        text = _CRASH_EXITS.get(name, f"unhandled exit KVM_EXIT_{name}")
        return Outcome("crash", vid, reason=text, exit_reason=reason)
