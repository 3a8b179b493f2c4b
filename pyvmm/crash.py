"""Crash reports: registers, the symbol at RIP and the instruction bytes there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvmm.errors import GuestMemoryError
from pyvmm.x86.modes import EFER_LMA, PAGING_NONE, paging_mode
from pyvmm.x86.paging import translate

if TYPE_CHECKING:
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.loader.symbols import Symbols
    from pyvmm.memory import GuestMemory

#: the order of the register dump
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")


@dataclass
class GuestCrash:
    """What the vCPU looked like when the guest crashed."""

    reason: str
    vcpu: int
    regs: dict[str, int] = field(default_factory=dict)
    sregs: dict[str, int] = field(default_factory=dict)
    symbol: str | None = None
    insn: bytes = b""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def rip(self) -> int:
        return self.regs.get("rip", 0)

    def format(self) -> str:
        r, s = self.regs, self.sregs
        where = f" <{self.symbol}>" if self.symbol else ""
        lines = [f"guest crash on vCPU {self.vcpu}: {self.reason}"]
        if not r:
            return lines[0]
        lines.append(f"  RIP={r['rip']:016x}{where}  RFLAGS={r['rflags']:016x}")
        for i in range(0, 16, 4):
            lines.append("  " + " ".join(f"{n.upper():<3}={r[n]:016x}" for n in GPRS[i:i + 4]))
        lines.append("  " + " ".join(f"{n.upper()}={s[n]:x}" for n in
                                     ("cr0", "cr2", "cr3", "cr4", "efer")))
        lines.append("  " + " ".join(f"{n.upper()}={s[n]:04x}" for n in ("cs", "ds", "ss")))
        if self.insn:
            lines.append(f"  code at RIP: {self.insn.hex(' ')}")
        if self.details:
            lines.append(f"  details: {self.details}")
        return "\n".join(lines)


def capture(vcpu: Vcpu, memory: GuestMemory, symbols: Symbols | None, reason: str,
            details: dict[str, Any] | None = None) -> GuestCrash:
    """Read the vCPU's state (two ioctls: this is the slow path) into a GuestCrash."""
    crash = GuestCrash(reason, vcpu.id, details=dict(details or {}))
    try:
        regs, sregs = vcpu.get_regs(), vcpu.get_sregs()
    except OSError:
        return crash
    crash.regs = regs
    crash.sregs = {n: int(getattr(sregs, n)) for n in ("cr0", "cr2", "cr3", "cr4", "efer")}
    crash.sregs.update(cs=int(sregs.cs.selector), ds=int(sregs.ds.selector),
                       ss=int(sregs.ss.selector))
    mode = paging_mode(sregs)
    # outside long mode CS has a base (real mode: selector << 4); in long mode it is 0
    rip = crash.regs["rip"] + (int(sregs.cs.base) if not int(sregs.efer) & EFER_LMA else 0)
    if symbols is not None:
        crash.symbol = symbols.lookup(crash.regs["rip"])
    crash.insn = read_code(memory, mode, int(sregs.cr3), rip & 0xFFFF_FFFF_FFFF_FFFF)
    return crash


def read_code(memory: GuestMemory, mode: str, cr3: int, va: int, n: int = 16) -> bytes:
    """Up to ``n`` bytes at guest-virtual ``va``, through the guest's own page tables in
    paging ``mode`` (:func:`pyvmm.x86.modes.paging_mode`).  Every guest value used here
    (CR3, the entries) goes through bounds-checked reads."""
    try:
        pa = va if mode == PAGING_NONE else translate(memory.read_int, mode, cr3, va)
        if pa is None:
            return b""
        region = memory.region_at(pa, 1)
        return memory.read(pa, min(n, region.end - pa, 4096 - (pa & 0xFFF)))
    except GuestMemoryError:
        return b""
