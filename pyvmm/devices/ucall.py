"""The host side of pyvmm's guest-host test protocol (pyvmm/guest/include/pyvmm/ucall.h).

A guest executes one OUT to :data:`UCALL_PORT` with the address of a ``struct ucall`` in
RDI.  The vCPU's GPRs are already in ``kvm_run->s.regs`` (KVM_CAP_SYNC_REGS), so reading
RDI costs no ioctl; the struct and the strings it points to are read with bounds-checked
guest-memory reads (any address in RAM, above 4 GiB too; a bad pointer becomes an error
event, never a host fault).  Each message becomes a :class:`GuestEvent`:

- ``sync``: the registered sync handlers run on the vCPU's thread, then the guest goes on;
- ``print``: the formatted text (also echoed to the serial sink);
- ``assert``: GUEST_ASSERT failed: file, line, expression and the two values; ends the run;
- ``exception``: an exception with no guest handler: vector, error code, CR2, RIP; ends it;
- ``done``: GUEST_DONE; ends the run successfully.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.fastpath import Space
from pyvmm.errors import GuestMemoryError
from pyvmm.memory import GuestMemory
from pyvmm.record import Record

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.loader.symbols import Symbols

UCALL_PORT = 0x1000
MAX_ARGS = 6
BUF = 256
_HEAD = struct.Struct(f"<QQ{MAX_ARGS}QQQQ")  # cmd nargs args[6] file line expr
UCALL_SIZE = _HEAD.size + BUF
CMDS = {1: "sync", 2: "assert", 3: "print", 4: "done", 5: "exception"}
EXCEPTIONS = {0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
              8: "#DF", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF", 16: "#MF",
              17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP"}


class GuestEvent(Record):
    """One message from the guest."""

    _fields = ("kind", "vcpu", "args", "file", "line", "expr", "text", "rip", "symbol", "regs",
               "time_ns")
    _no_compare = _no_repr = ("time_ns",)

    def __init__(self, kind: str, vcpu: int, args: tuple[int, ...] = (), file: str = "",
                 line: int = 0, expr: str = "", text: str = "", rip: int = 0,
                 symbol: str | None = None, regs: dict[str, int] | None = None,
                 time_ns: int | None = None) -> None:
        self.kind = kind
        self.vcpu = vcpu
        self.args = args
        self.file = file
        self.line = line
        self.expr = expr
        self.text = text
        self.rip = rip
        self.symbol = symbol
        self.regs: dict[str, int] = {} if regs is None else regs
        #: when the guest sent it (CLOCK_MONOTONIC ns, the clock of --trace's exit records)
        self.time_ns = time.monotonic_ns() if time_ns is None else time_ns

    @property
    def stage(self) -> int | None:
        return self.args[0] if self.kind == "sync" and self.args else None

    def describe(self) -> str:
        if self.kind == "assert":
            vals = f" ({self.args[0]:#x} != {self.args[1]:#x})" if len(self.args) >= 2 else ""
            return f"guest assertion failed at {self.file}:{self.line}: {self.expr}{vals}"
        if self.kind == "exception":
            vec, err, cr2, rip = (*self.args, 0, 0, 0, 0)[:4]
            name = EXCEPTIONS.get(vec, f"vector {vec}")
            where = f" <{self.symbol}>" if self.symbol else ""
            # the 5th value, when sent, is the CS the exception pushed: RPL 3 is user mode
            cpl = " CPL3" if len(self.args) >= 5 and self.args[4] & 3 == 3 else ""
            return (f"unhandled guest exception {name} (vector {vec}, error code {err:#x}) at"
                    f"{cpl} RIP {rip:#x}{where}, CR2 {cr2:#x}")
        if self.kind == "print":
            return self.text
        if self.kind == "error":
            return f"bad guest message: {self.text}"
        if self.kind == "sync" and self.args:
            vals = ", ".join(f"{a:#x}" for a in self.args[1:])
            return f"GUEST_SYNC stage {self.args[0]}" + (f": {vals}" if vals else "")
        return f"GUEST_{self.kind.upper()}"


SyncHandler = Callable[[GuestEvent], None]


def _no_symbols() -> Symbols | None:
    return None


class UcallDevice(Device):
    """The protocol port.  ``symbols`` names guest RIPs in exception events; ``emit``
    receives every event (on the vCPU's thread); sync handlers run after it."""

    def __init__(self, memory: GuestMemory, symbols: Callable[[], Symbols | None],
                 emit: Callable[[GuestEvent], None], name: str = "ucall") -> None:
        self.name = name
        self.memory = memory
        self._symbols = symbols
        self._emit = emit
        self.sync_handlers: list[SyncHandler] = []

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, UCALL_PORT, 4)]

    def close(self) -> None:
        """Forget the machine's symbols callback (a closure over the machine, which holds
        this device: a cycle only the collector would break)."""
        self._symbols = _no_symbols

    # The guest observes nothing of this device: the sync handlers are the host's, and a
    # snapshot must not put back the list it saw (a restore dropped every handler
    # registered after the snapshot).  Files written before carry an empty list: accepted.
    def state(self) -> dict[str, Any]:
        return {}

    def check_state(self, state: dict[str, Any]) -> None:
        for k in state:
            if k != "sync_handlers":
                raise ValueError(f"it has no {k!r}")

    def set_state(self, state: dict[str, Any]) -> None:
        self.check_state(state)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if ctx.vcpu < 0:
            return  # not from a vCPU (the host poking the bus): no RDI to read
        event = self.decode(ctx.reg("rdi"), ctx.vcpu)
        event.rip = ctx.reg("rip")
        self._emit(event)
        if event.kind == "sync":
            for handler in list(self.sync_handlers):
                handler(event)
        elif event.kind == "done":
            raise GuestStop(0, "done", event)
        elif event.kind in ("assert", "exception", "error"):
            raise GuestStop(1, event.kind, event)

    def decode(self, gpa: int, vcpu: int) -> GuestEvent:
        """Read and check the ``struct ucall`` at ``gpa``.  Every field is untrusted."""
        try:
            raw = self.memory.read(gpa, UCALL_SIZE)
        except GuestMemoryError as e:
            return GuestEvent("error", vcpu, text=f"ucall struct at {gpa:#x} is not in RAM: {e}")
        cmd, nargs, *rest = _HEAD.unpack_from(raw)
        args, (file_p, line, expr_p) = rest[:MAX_ARGS], rest[MAX_ARGS:]
        kind = CMDS.get(cmd)
        if kind is None:
            return GuestEvent("error", vcpu, text=f"unknown ucall command {cmd}")
        ev = GuestEvent(kind, vcpu, tuple(args[:min(nargs, MAX_ARGS)]), line=line)
        if kind == "assert":
            ev.args = tuple(args[:2]) if nargs >= 2 else ()
            ev.file = self._string(file_p)
            ev.expr = self._string(expr_p)
        elif kind == "print":
            ev.text = raw[_HEAD.size:].split(b"\0", 1)[0].decode("utf-8", "replace")
        elif kind == "exception":
            syms = self._symbols()
            if syms is not None and len(ev.args) >= 4:
                ev.symbol = syms.lookup(ev.args[3])
        return ev

    def _string(self, gpa: int) -> str:
        try:
            return self.memory.read_cstring(gpa, 512).decode("utf-8", "replace")
        except GuestMemoryError:
            return f"<bad pointer {gpa:#x}>"
