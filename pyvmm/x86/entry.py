"""Entry states: how a vCPU starts, as data, and the one place that puts it on a vCPU.

Every loader describes its guest's start as an :class:`EntryState` (pyvmm's ELF64 entry:
long mode; multiboot: 32-bit protected mode; a guest that climbs by itself: real mode);
:func:`apply_entry` turns it into KVM_SET_SREGS + KVM_SET_REGS.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from pyvmm.errors import ConfigError
from pyvmm.kvm.native import ffi
from pyvmm.kvm.vcpu import regs_struct
from pyvmm.record import FrozenRecord
from pyvmm.x86.modes import set_long_mode, set_protected_mode, set_real_mode

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.kvm.vcpu import Vcpu

LONG, PROTECTED, REAL = "long", "protected", "real"


class EntryState(FrozenRecord):
    """``mode`` (long, protected or real), ``rip`` and the other registers that are not 0
    (RFLAGS is 0x2: interrupts off); ``cr3`` and ``gdt_base`` for long mode, ``gdt_base``
    for protected mode, ``cs`` (the segment, base ``cs << 4``) for real mode."""

    _fields = ("mode", "rip", "regs", "cr3", "gdt_base", "cs")
    mode: str
    rip: int
    regs: Mapping[str, int]
    cr3: int
    gdt_base: int
    cs: int

    def __init__(self, mode: str, rip: int, regs: Mapping[str, int] | None = None,
                 cr3: int = 0, gdt_base: int = 0, cs: int = 0) -> None:
        self._set(mode=mode, rip=rip, regs=MappingProxyType({}) if regs is None else regs,
                  cr3=cr3, gdt_base=gdt_base, cs=cs)

    @classmethod
    def long_mode(cls, rip: int, *, cr3: int, gdt_base: int, **regs: int) -> EntryState:
        return cls(LONG, rip, MappingProxyType(regs), cr3=cr3, gdt_base=gdt_base)

    @classmethod
    def protected_mode(cls, rip: int, *, gdt_base: int, **regs: int) -> EntryState:
        return cls(PROTECTED, rip, MappingProxyType(regs), gdt_base=gdt_base)

    @classmethod
    def real_mode(cls, address: int) -> EntryState:
        """Real mode at ``address`` (below 1 MiB) as ``(address >> 4):(address & 0xF)``, the
        form INIT and SIPI leave an AP in (16-byte aligned: IP 0) and firmware jumps to an
        S3 waking vector."""
        if not 0 <= address < 0x100000:
            raise ConfigError(f"real-mode entry {address:#x} must be below 1 MiB")
        return cls(REAL, address & 0xF, cs=address >> 4)

    def describe(self) -> str:
        extra = "".join(f", {k.upper()}={v:#x}" for k, v in self.regs.items())
        if self.mode == REAL:
            return f"real mode at {self.cs:04x}:{self.rip:04x}"
        where = f"{self.mode} mode at {self.rip:#x}"
        return where + (f", CR3={self.cr3:#x}" if self.mode == LONG else "") + extra


#: the CPU-mode half of KVM_SET_SREGS per (mode, CR3, GDT base, CS): a loader's entry is
#: the same for every machine that runs its image, and filling a struct costs more than
#: looking one up (bounded: a fuzzer's or a suite's images are few)
_MODES: dict[tuple[str, int, int, int], Any] = {}
_MODES_MAX = 64


def mode_sregs(entry: EntryState) -> Any:
    """A ``struct kvm_sregs`` whose segments, GDT, IDT, CR0/3/4 and EFER put a vCPU in
    ``entry``'s mode (what :meth:`pyvmm.kvm.vcpu.Vcpu.enter` takes from it).  Shared by
    every machine entered that way: read it, copy it, never change it."""
    key = (entry.mode, entry.cr3, entry.gdt_base, entry.cs)
    sregs = _MODES.get(key)
    if sregs is None:
        sregs = ffi.new("struct kvm_sregs *")
        if entry.mode == LONG:
            set_long_mode(sregs, cr3=entry.cr3, gdt_base=entry.gdt_base)
        elif entry.mode == PROTECTED:
            set_protected_mode(sregs, gdt_base=entry.gdt_base)
        elif entry.mode == REAL:
            set_real_mode(sregs, entry.cs)
        else:
            raise ConfigError(f"unknown entry mode {entry.mode!r}")
        if len(_MODES) >= _MODES_MAX:
            _MODES.clear()
        _MODES[key] = sregs
    return sregs


def apply_entry(vcpu: Vcpu, entry: EntryState) -> None:
    """Put ``entry`` on ``vcpu``: KVM_GET_SREGS, KVM_SET_SREGS and KVM_SET_REGS in one
    native call (TR, LDT and the APIC base stay as KVM has them)."""
    vcpu.enter(mode_sregs(entry), regs_struct({**entry.regs, "rip": entry.rip}))
