"""Crash reports: registers, the symbol at RIP and the instruction bytes there."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pyvmm.errors import GuestMemoryError
from pyvmm.x86.paging import walk

if TYPE_CHECKING:
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.loader.symbols import Symbols
    from pyvmm.memory import GuestMemory

#: the order of the register dump
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
CR0_PG = 1 << 31


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
    rip = crash.regs["rip"] + (int(sregs.cs.base) if not sregs.cr0 & CR0_PG else 0)
    if symbols is not None:
        crash.symbol = symbols.lookup(crash.regs["rip"])
    crash.insn = read_code(memory, int(sregs.cr3) if sregs.cr0 & CR0_PG else None, rip)
    return crash


def read_code(memory: GuestMemory, cr3: int | None, va: int, n: int = 16) -> bytes:
    """Up to ``n`` bytes at guest-virtual ``va``, through the guest's own page tables.
    Every guest value used here (CR3, PTEs) goes through bounds-checked reads."""
    try:
        pa = va if cr3 is None else walk(lambda a: memory.read_int(a, 8), cr3, va)
        if pa is None:
            return b""
        region = memory.region_at(pa, 1)
        return memory.read(pa, min(n, region.end - pa, 4096 - (pa & 0xFFF)))
    except GuestMemoryError:
        return b""
