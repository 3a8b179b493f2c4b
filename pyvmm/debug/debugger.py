"""``Machine.debug``: breakpoints, watchpoints, single-step, pause and resume, registers
and guest-virtual memory, for the gdb stub and for Python tools that drive a guest.

Hardware breakpoints and watchpoints use the debug registers through KVM_SET_GUEST_DEBUG
(DR0-3 hold addresses, DR7 says what each one watches; Intel SDM vol. 3B, 18.2), the same
four on every vCPU.  Software breakpoints patch ``int3`` (0xCC) into guest memory and ask
KVM to turn the guest's #BP into a KVM_EXIT_DEBUG (KVM_GUESTDBG_USE_SW_BP); hosts whose
CPL0 code cannot execute ``int3`` (the PVM host: ``pyvmm doctor``'s sw-breakpoint probe)
get a free debug register instead.  With no breakpoint, no watchpoint and no step, guest
debugging is switched off, so an attached debugger costs nothing per exit.

A stop on one vCPU stops them all (the run is one :meth:`Machine.run`); a vCPU that
stopped on a breakpoint of its own in the same instant is reported at the next resume.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pyvmm.debug.registers import RegisterError, RegisterFile, check_value
from pyvmm.errors import GuestExitedError, GuestMemoryError, PyvmmError
from pyvmm.kvm.vcpu import GUESTDBG_ENABLE, GUESTDBG_SINGLESTEP, GUESTDBG_USE_HW_BP, GUESTDBG_USE_SW_BP
from pyvmm.vstate.result import Outcome, RunResult, RunStatus
from pyvmm.x86.modes import paging_mode
from pyvmm.x86.paging import translate

if TYPE_CHECKING:
    from collections.abc import Collection, Sequence

    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.memory import GuestMemory
    from pyvmm.vstate.loop import VcpuLoop


class DebugTarget(Protocol):
    """What the debugger drives (``Machine`` is one): the vCPUs and their loops, guest
    RAM, and runs of all vCPUs or of one (a step)."""

    @property
    def memory(self) -> GuestMemory: ...

    @property
    def vcpus(self) -> Sequence[Vcpu]: ...

    @property
    def loops(self) -> Sequence[VcpuLoop]: ...

    def vcpu_loop(self, index: int = 0) -> VcpuLoop: ...

    def run(self, timeout: float | None = None, *, python_loop: bool = False,
            vcpus: Collection[int] | None = None, stats: bool = True) -> RunResult: ...

    def stop(self) -> None: ...


@dataclass(frozen=True)
class HostDebug:
    """What the host's debug support offers (``pyvmm doctor``'s sw-breakpoint and
    hw-watchpoint probes): int3 at CPL0, and debug registers that fire on data."""

    software_breakpoints: bool
    data_watchpoints: bool

MAX_HW_SLOTS = 4
#: DR7 R/W field per kind (01 data writes, 11 data reads or writes: x86 has no read-only)
DR7_RW = {"exec": 0b00, "write": 0b01, "read": 0b11, "access": 0b11}
#: DR7 LEN field per length in bytes
DR7_LEN = {1: 0b00, 2: 0b01, 8: 0b10, 4: 0b11}
DR7_GE = 1 << 9
DR6_BS = 1 << 14
BP_VECTOR, DB_VECTOR = 3, 1
INT3 = b"\xcc"
PAGE = 4096
ADDRESS_LIMIT = 1 << 64

#: gdb's signal numbers for the ways a guest stops (the stub sends them in T packets)
SIGTRAP, SIGINT, SIGSEGV, SIGABRT, SIGBUS = 5, 2, 11, 6, 7
_TERMINAL_SIGNAL = {RunStatus.CRASH: SIGSEGV, RunStatus.ASSERT: SIGABRT,
                    RunStatus.IO_ERROR: SIGBUS}


class DebugError(PyvmmError):
    """A debugger request the machine cannot carry out: no free debug register, an
    unaligned or oversized watchpoint, an address that is not mapped."""


def _check_address(address: int) -> None:
    """A guest-virtual address is 64 bits: anything else (from a gdb packet, from a
    script) is refused here, before it reaches a debug register or an ioctl's struct."""
    if not 0 <= address < ADDRESS_LIMIT:
        raise DebugError(f"{address:#x} is not a 64-bit address")


@dataclass(frozen=True)
class HwSlot:
    """What one debug register watches: ``kind`` exec/write/read/access, ``length`` 1, 2,
    4 or 8 bytes (exec: 1)."""

    address: int
    kind: str
    length: int = 1


@dataclass
class Stop:
    """Why the guest stopped under the debugger.

    ``reason``: ``step``, ``breakpoint``, ``watchpoint``, ``paused`` (pause() or a stop),
    ``timeout``, ``interrupted`` (a signal to pyvmm), ``crashed`` (crash, assertion, I/O
    error: state still readable, the next resume ends the run), ``ended`` (exited, done,
    powered off, VMM error: nothing more to run).
    ``signal`` is the gdb signal number the stub reports; ``address`` the breakpoint's or
    watched address; ``result`` the run's result (its status says how it ended)."""

    vcpu: int
    reason: str
    signal: int
    result: RunResult
    address: int | None = None
    watch_kind: str | None = None
    software: bool = False
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.reason == "ended"


class Debugger:
    """The debug API of one machine (``machine.debug``).  Methods that touch vCPU state
    must be called while the guest is stopped (between resumes); :meth:`pause` may be
    called from any thread."""

    def __init__(self, machine: DebugTarget, *, software_breakpoints: bool = False,
                 emulate_watchpoints: bool | None = None, host: HostDebug | None = None) -> None:
        self.machine = machine
        #: patch int3 for breakpoints (the host can run it); else use a debug register
        self.software_breakpoints = software_breakpoints
        #: the host's debug registers never fire on data accesses (pyvmm doctor:
        #: hw-watchpoint): write watchpoints single-step every vCPU and compare the bytes.
        #: None: emulated, unless ``host`` says the debug registers fire
        self.emulate_watchpoints = emulate_watchpoints
        if host is not None:  # what the host offers decides (the doctor's probes)
            self.software_breakpoints = host.software_breakpoints
            self.emulate_watchpoints = not host.data_watchpoints
        self.soft_watches: dict[tuple[int, int], tuple[int, bytes]] = {}
        self._watch_lock = threading.Lock()
        self._filtering = False
        self.slots: list[HwSlot | None] = [None] * MAX_HW_SLOTS
        self.sw_breakpoints: dict[int, tuple[int, bytes]] = {}  # va -> (gpa, original byte)
        self._files: dict[int, RegisterFile] = {}
        self._applied: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._pending: list[Stop] = []
        self._terminal: Stop | None = None
        self.ended: RunResult | None = None

    # --- breakpoints and watchpoints -------------------------------------------
    def add_breakpoint(self, address: int, *, hardware: bool | None = None) -> None:
        """A breakpoint at guest-virtual ``address``: a debug register when ``hardware``
        (or when the host cannot run int3), else an int3 patched into memory."""
        _check_address(address)
        if hardware is None:
            hardware = not self.software_breakpoints
        if hardware:
            self._add_slot(HwSlot(address, "exec"))
            return
        if address in self.sw_breakpoints:
            return
        gpa = self._gpa(address, 0)
        original = self.machine.memory.read(gpa, 1)
        self.machine.memory.write(gpa, INT3)
        self.sw_breakpoints[address] = (gpa, original)

    def remove_breakpoint(self, address: int, *, hardware: bool | None = None) -> bool:
        """Remove a breakpoint; False when there was none at ``address``."""
        if hardware is None:
            hardware = not self.software_breakpoints
        if hardware:
            return self._remove_slot(HwSlot(address, "exec"))
        entry = self.sw_breakpoints.pop(address, None)
        if entry is None:
            return False
        self.machine.memory.write(entry[0], entry[1])
        return True

    def add_watchpoint(self, address: int, length: int, kind: str = "write") -> None:
        """Stop after the guest writes (``write``), reads or writes (``read``/``access``:
        x86 cannot watch reads alone) ``length`` bytes at ``address`` (1, 2, 4 or 8,
        aligned to the length; longer ranges need one watchpoint per aligned piece)."""
        _check_address(address)
        if kind not in ("write", "read", "access"):
            raise DebugError(f"watchpoint kind must be write, read or access, not {kind!r}")
        if length not in DR7_LEN or address % length:
            raise DebugError(f"a debug register watches 1, 2, 4 or 8 bytes aligned to their "
                             f"size, not {length} at {address:#x}")
        if not self.watchpoints_emulated():
            self._add_slot(HwSlot(address, kind, length))
            return
        if kind != "write":
            raise DebugError("this host's debug registers never fire on data accesses (pyvmm "
                             "doctor: hw-watchpoint); only write watchpoints can be emulated")
        gpa = self._gpa(address, 0)
        self.soft_watches[(address, length)] = (gpa, self.machine.memory.read(gpa, length))

    def watchpoints_emulated(self) -> bool:
        """Whether write watchpoints are emulated by stepping: as set (or as the host's
        :class:`HostDebug` said); when nobody said, emulated (stepping works everywhere)."""
        if self.emulate_watchpoints is None:
            self.emulate_watchpoints = True
        return self.emulate_watchpoints

    def remove_watchpoint(self, address: int, length: int, kind: str = "write") -> bool:
        if self.watchpoints_emulated():
            return self.soft_watches.pop((address, length), None) is not None
        return self._remove_slot(HwSlot(address, kind, length))

    def clear(self) -> None:
        """Remove every breakpoint and watchpoint (restoring patched bytes)."""
        for address in list(self.sw_breakpoints):
            self.remove_breakpoint(address, hardware=False)
        self.slots = [None] * MAX_HW_SLOTS
        self.soft_watches.clear()

    def _add_slot(self, slot: HwSlot) -> None:
        if slot in self.slots:
            return
        try:
            self.slots[self.slots.index(None)] = slot
        except ValueError:
            raise DebugError(f"all {MAX_HW_SLOTS} debug registers are in use") from None

    def _remove_slot(self, slot: HwSlot) -> bool:
        if slot not in self.slots:
            return False
        self.slots[self.slots.index(slot)] = None
        return True

    def debug_registers(self, skip: int | None = None) -> tuple[int, ...]:
        """DR0-3 and DR7 (in KVM's 8-slot layout) for the current slots; an exec slot at
        ``skip`` is left disabled (stepping off a breakpoint)."""
        regs = [0] * 8
        dr7 = 0
        for i, s in enumerate(self.slots):
            if s is None or (s.kind == "exec" and s.address == skip):
                continue
            regs[i] = s.address
            dr7 |= (1 << (2 * i)) | (DR7_RW[s.kind] << (16 + 4 * i)) | (DR7_LEN[s.length] << (18 + 4 * i))
            if s.kind != "exec":
                dr7 |= DR7_GE
        regs[7] = dr7
        return tuple(regs)

    def _program(self, step: int | Iterable[int] | None, skip: dict[int, int]) -> None:
        """KVM_SET_GUEST_DEBUG on every vCPU whose setting changes (one ioctl each);
        ``step``: the vCPU (or vCPUs) to single-step."""
        steps = {step} if isinstance(step, int) else set(step or ())
        any_slot = any(s is not None for s in self.slots)
        for vcpu in self.machine.vcpus:
            control = 0
            debugreg: tuple[int, ...] = ()
            if any_slot:
                control |= GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP
                debugreg = self.debug_registers(skip.get(vcpu.id))
            if self.sw_breakpoints:
                control |= GUESTDBG_ENABLE | GUESTDBG_USE_SW_BP
            if vcpu.id in steps:
                control |= GUESTDBG_ENABLE | GUESTDBG_SINGLESTEP
            want = (control, debugreg)
            if self._applied.get(vcpu.id, (0, ())) != want:
                vcpu.set_guest_debug(control, debugreg)
                self._applied[vcpu.id] = want

    # --- state -------------------------------------------------------------------
    def registers(self, vcpu: int = 0) -> RegisterFile:
        """vCPU ``vcpu``'s registers as of this stop (read once, written at resume)."""
        self._check_vcpu(vcpu)
        f = self._files.get(vcpu)
        if f is None:
            f = self._files[vcpu] = RegisterFile(self.machine.vcpus[vcpu])
        return f

    def regs(self, vcpu: int = 0) -> dict[str, int]:
        """General-purpose registers, RIP and RFLAGS by name."""
        return dict(self.registers(vcpu).regs)

    def set_regs(self, vcpu: int = 0, **values: int) -> None:
        """Change registers by kvm_regs name (``rip=...``); written at the next resume."""
        f = self.registers(vcpu)
        unknown = set(values) - set(f.regs)
        if unknown:
            raise DebugError(f"not a general register: {', '.join(sorted(unknown))}")
        for name, value in values.items():
            try:
                check_value(name, value, f.sregs)
            except RegisterError as e:
                raise DebugError(str(e)) from None
        f.regs.update(values)
        f._dirty.add("regs")

    def translate(self, address: int, vcpu: int = 0) -> int | None:
        """Guest-virtual ``address`` as the vCPU sees it now -> guest-physical, or None:
        :func:`pyvmm.x86.paging.translate` over the vCPU's own tables (bounds-checked
        reads) in its paging mode; no paging is the identity below 4 GiB."""
        if not 0 <= address < 1 << 64:
            return None
        s = self.registers(vcpu).sregs
        try:
            return translate(self.machine.memory.read_int, paging_mode(s), int(s.cr3), address)
        except GuestMemoryError:
            return None

    def _gpa(self, address: int, vcpu: int) -> int:
        gpa = self.translate(address, vcpu)
        if gpa is None:
            raise DebugError(f"{address:#x} is not mapped on vCPU {vcpu}")
        try:
            self.machine.memory.region_at(gpa, 1)
        except GuestMemoryError:
            raise DebugError(f"{address:#x} (physical {gpa:#x}) is not guest RAM") from None
        return gpa

    def read_memory(self, address: int, length: int, vcpu: int = 0) -> bytes:
        """Up to ``length`` bytes at guest-virtual ``address``: fewer when the range runs
        into an unmapped page or into non-RAM; DebugError when its first byte is not
        readable.  Software breakpoints read as the original bytes."""
        _check_address(address)
        length = min(length, ADDRESS_LIMIT - address)  # the last byte is 2^64-1
        out = bytearray()
        while len(out) < length:
            va = address + len(out)
            try:
                gpa = self._gpa(va, vcpu)
            except DebugError:
                if not out:
                    raise
                break
            n = min(length - len(out), PAGE - (va & (PAGE - 1)))
            region = self.machine.memory.region_at(gpa, 1)
            n = min(n, region.end - gpa)
            out += self.machine.memory.read(gpa, n)
        for bp, (_, original) in self.sw_breakpoints.items():
            if address <= bp < address + len(out):
                out[bp - address] = original[0]
        return bytes(out)

    def write_memory(self, address: int, data: bytes, vcpu: int = 0) -> None:
        """Write ``data`` at guest-virtual ``address``: every page is translated before
        anything is written, so a write into an unmapped page changes nothing."""
        _check_address(address)
        if address + len(data) > ADDRESS_LIMIT:
            raise DebugError(f"{len(data)} bytes at {address:#x} run past the end of the "
                             "64-bit address space")
        pieces: list[tuple[int, bytes]] = []
        off = 0
        while off < len(data):
            va = address + off
            gpa = self._gpa(va, vcpu)
            n = min(len(data) - off, PAGE - (va & (PAGE - 1)))
            region = self.machine.memory.region_at(gpa, 1)
            if region.readonly:
                raise DebugError(f"{va:#x} is read-only memory")
            n = min(n, region.end - gpa)
            pieces.append((gpa, data[off:off + n]))
            off += n
        for gpa, chunk in pieces:
            self.machine.memory.write(gpa, chunk)
        for bp, (gpa, _) in list(self.sw_breakpoints.items()):
            if address <= bp < address + len(data):  # keep the patch, remember the new byte
                self.sw_breakpoints[bp] = (gpa, data[bp - address:bp - address + 1])
                self.machine.memory.write(gpa, INT3)

    def _check_vcpu(self, vcpu: int) -> None:
        if not 0 <= vcpu < len(self.machine.vcpus):
            raise DebugError(f"no vCPU {vcpu} (this machine has {len(self.machine.vcpus)})")

    # --- running -------------------------------------------------------------------
    def pause(self) -> None:
        """Stop every vCPU now (any thread); the resume in progress returns ``paused``."""
        self.machine.stop()

    def step(self, vcpu: int = 0, timeout: float | None = None) -> Stop:
        """Execute one instruction on ``vcpu`` (the others stay stopped)."""
        self._check_vcpu(vcpu)
        return self._resume(vcpu, timeout)

    def cont(self, timeout: float | None = None) -> Stop:
        """Run every vCPU until a breakpoint, a watchpoint, :meth:`pause`, the end of the
        guest or ``timeout`` seconds of running."""
        return self._resume(None, timeout)

    def _resume(self, step: int | None, timeout: float | None) -> Stop:
        if self.ended is not None:
            raise GuestExitedError(f"the guest has ended ({self.ended.status}: {self.ended.message})")
        if self._terminal is not None:  # resuming after a crash: the run is over
            return self._end(self._terminal.result)
        if self._pending and step is None:
            return self._pending.pop(0)
        self._pending.clear()
        skip = self._breakpoints_under_rip(range(len(self.machine.vcpus)) if step is None
                                           else (step,))
        for f in self._files.values():
            f.commit()
        if step is None and skip:
            for vcpu in list(skip):  # step off the breakpoint first, as gdb does
                self._program(vcpu, skip)
                first = self._decode(self._run(vcpu, timeout), vcpu, single=True)
                if first.reason != "step":
                    self._files.clear()
                    return first
            skip = {}
        watching = bool(self.soft_watches) and step is None
        # stays armed until the next resume or detach(); emulated watchpoints step them all
        self._program(range(len(self.machine.vcpus)) if watching else step, skip)
        result = self._run(step, timeout, watching)
        self._files.clear()
        return self._decode(result, step, single=step is not None)

    def _run(self, vcpu: int | None, timeout: float | None, watching: bool = False) -> RunResult:
        self._filtering = watching
        if self.soft_watches:
            self.machine.vcpu_loop(0)  # the loops exist from here on
            for loop in self.machine.loops:
                loop.on_debug = self._watch_filter
        try:
            return self.machine.run(timeout, vcpus=None if vcpu is None else (vcpu,), stats=False)
        finally:
            for loop in self.machine.loops:
                loop.on_debug = None

    def _watch_filter(self, out: Outcome) -> bool:
        """On a vCPU thread, at every debug exit while write watchpoints are emulated:
        True (run on) for a plain single step that changed no watched bytes."""
        d = out.details
        with self._watch_lock:
            for (va, length), (gpa, old) in self.soft_watches.items():
                new = self.machine.memory.read(gpa, length)
                if new != old:
                    self.soft_watches[(va, length)] = (gpa, new)
                    d["watch"] = va
                    return False
        return (self._filtering and d.get("exception") == DB_VECTOR
                and not d.get("dr6", 0) & 0xF)

    def _breakpoints_under_rip(self, vcpus: Iterable[int]) -> dict[int, int]:
        """vCPUs sitting on one of our execution breakpoints: their RIP.  Only read when
        there are execution breakpoints (one ioctl per vCPU)."""
        execs = {s.address for s in self.slots if s is not None and s.kind == "exec"}
        if not execs:
            return {}
        out = {}
        for v in vcpus:
            rip = self.registers(v).regs["rip"]
            if rip in execs:
                out[v] = rip
        return out

    def _decode(self, result: RunResult, vcpu: int | None, single: bool) -> Stop:
        debug = [o for o in result.outcomes if o.kind == RunStatus.DEBUG]
        if result.status == RunStatus.DEBUG and debug:
            stops = [self._debug_stop(o.vcpu, o.details, result, single) for o in debug]
            self._pending = stops[1:]
            return stops[0]
        default = vcpu if vcpu is not None else 0
        if result.status in (RunStatus.STOPPED, RunStatus.KICKED):
            return Stop(default, "paused", SIGINT, result)
        if result.status == RunStatus.TIMEOUT:
            return Stop(default, "timeout", int(signal.SIGALRM), result)
        if result.status == RunStatus.INTERRUPTED:
            return Stop(default, "interrupted", result.signal or SIGINT, result)
        sig = _TERMINAL_SIGNAL.get(result.status)
        if sig is not None:
            where = next((o.vcpu for o in result.outcomes if o.kind == result.status), default)
            self._terminal = Stop(where, "crashed", sig, result)
            return self._terminal
        return self._end(result)

    def _end(self, result: RunResult) -> Stop:
        self.ended = result
        return Stop(0, "ended", 0, result)

    def reset(self) -> None:
        """Forget what was read or decided about the last stop (the machine was restored
        from a snapshot): breakpoints and watchpoints stay set."""
        self._files.clear()
        self._pending.clear()
        self._terminal = None
        self.ended = None
        self._applied.clear()

    def detach(self) -> None:
        """Remove every breakpoint and watchpoint and switch guest debugging off: the
        guest runs on as if no debugger had been there."""
        self.clear()
        self._files.clear()
        self._program(None, {})

    def _debug_stop(self, vcpu: int, details: dict[str, int], result: RunResult,
                    single: bool) -> Stop:
        exception, dr6, pc = details.get("exception"), details.get("dr6", 0), details.get("pc", 0)
        if "watch" in details:
            return Stop(vcpu, "watchpoint", SIGTRAP, result, address=details["watch"],
                        watch_kind="write")
        if exception == BP_VECTOR:
            return Stop(vcpu, "breakpoint", SIGTRAP, result, address=pc, software=True)
        for i, s in enumerate(self.slots):
            if s is not None and dr6 & (1 << i):
                if s.kind == "exec":
                    return Stop(vcpu, "breakpoint", SIGTRAP, result, address=s.address)
                return Stop(vcpu, "watchpoint", SIGTRAP, result, address=s.address, watch_kind=s.kind)
        return Stop(vcpu, "step" if single or dr6 & DR6_BS else "breakpoint", SIGTRAP, result,
                    extra={"dr6": dr6})
