"""A vCPU's registers as gdb numbers them: the x86-64 target description and the
``g``/``G``/``p``/``P`` packet encodings.

gdb's amd64 code wants the ``org.gnu.gdb.i386.core`` feature with the 16 GPRs, RIP,
EFLAGS, the six selectors and the x87 registers, in that order; SSE (``.sse``) and the
FS/GS bases (``.segments``) are optional features it knows; CR0/2/3/4/8 and EFER go in a
feature of pyvmm's own, which gdb shows by name (``p/x $cr3``, ``info registers cr3``).

:class:`RegisterFile` reads a vCPU's state once per stop (KVM_GET_REGS, _SREGS, _FPU:
three ioctls, ~7 us each on the PVM host) and writes back only the groups that changed.
"""

from __future__ import annotations

import contextlib
import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.native import cdata_bytes
from pyvmm.kvm.vcpu import GPRS
from pyvmm.x86.modes import CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR4_LA57, CR4_SMXE, CR4_VMXE, EFER_LMA

if TYPE_CHECKING:
    from pyvmm.kvm.vcpu import Vcpu

#: gdb's amd64 GPR order differs from struct kvm_regs' (rbp before rsp)
GDB_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
X87_CONTROL = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
SYSTEM = ("cr0", "cr2", "cr3", "cr4", "cr8", "efer")
assert set(GDB_GPRS) == set(GPRS)


@dataclass(frozen=True)
class Reg:
    """One register: its gdb name, size in bytes, the state group it lives in and the
    XML type gdb shows it with."""

    name: str
    size: int
    group: str  # regs | sregs | fpu
    feature: str
    type: str


def _layout() -> list[Reg]:
    core, sse = "org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"
    regs = [Reg(n, 8, "regs", core, "data_ptr" if n in ("rbp", "rsp") else "int64")
            for n in GDB_GPRS]
    regs += [Reg("rip", 8, "regs", core, "code_ptr"), Reg("eflags", 4, "regs", core, "i386_eflags")]
    regs += [Reg(n, 4, "sregs", core, "int32") for n in SEGMENTS]
    regs += [Reg(f"st{i}", 10, "fpu", core, "i387_ext") for i in range(8)]
    regs += [Reg(n, 4, "fpu", core, "int") for n in X87_CONTROL]
    regs += [Reg(f"xmm{i}", 16, "fpu", sse, "vec128") for i in range(16)]
    regs += [Reg("mxcsr", 4, "fpu", sse, "i386_mxcsr")]
    regs += [Reg(n, 8, "sregs", "org.gnu.gdb.i386.segments", "int64") for n in ("fs_base", "gs_base")]
    regs += [Reg(n, 8, "sregs", "org.pyvmm.x86.system", "int64") for n in SYSTEM]
    return regs


LAYOUT = _layout()
BY_NAME = {r.name: i for i, r in enumerate(LAYOUT)}
G_PACKET_SIZE = sum(r.size for r in LAYOUT)
_CORE = struct.Struct("<17QI6I")  # GPRs, RIP, EFLAGS, selectors
_X87 = struct.Struct("<8I")
_SYS = struct.Struct("<8Q")  # fs_base, gs_base, CR0, CR2, CR3, CR4, CR8, EFER

_TYPES = {
    "org.gnu.gdb.i386.core": """
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>""",
    "org.gnu.gdb.i386.sse": """
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>""",
}


def target_xml() -> bytes:
    """The target description gdb fetches with ``qXfer:features:read:target.xml``."""
    parts = ['<?xml version="1.0"?>\n<!DOCTYPE target SYSTEM "gdb-target.dtd">\n<target>\n'
             "<architecture>i386:x86-64</architecture>\n"]
    features: dict[str, list[str]] = {}
    for i, r in enumerate(LAYOUT):
        group = "general" if r.group == "regs" else ("float" if r.name.startswith(("st", "f"))
                                                      and r.group == "fpu" else "system")
        if r.feature == "org.gnu.gdb.i386.sse":
            group = "vector"
        features.setdefault(r.feature, []).append(
            f'  <reg name="{r.name}" bitsize="{r.size * 8}" type="{r.type}" regnum="{i}"'
            f' group="{group}"/>')
    for name, regs in features.items():
        parts.append(f'<feature name="{name}">{_TYPES.get(name, "")}\n' + "\n".join(regs) +
                     "\n</feature>\n")
    parts.append("</target>\n")
    return "".join(parts).encode()


class RegisterError(ValueError):
    """A register write the vCPU cannot take (a selector without its descriptor, a bad
    register number or size, a reserved bit, a value KVM refuses)."""


#: the bits x86-64 defines (Intel SDM vol. 3A 2.5, 2.2.1); a debugger write that sets any
#: other bit is refused, because KVM_SET_SREGS (or the next VM entry) would refuse it and
#: end the run, not only the write
CR0_BITS = 0xE005_003F  # PE MP EM TS ET NE WP AM NW CD PG
CR4_BITS = 0x13FF_7FFF  # VME..UMIP LA57 VMXE SMXE FSGSBASE..UINTR LAM_SUP
EFER_BITS = 0x0020_FD01  # SCE LME LMA NXE SVME LMSLE FFXSR TCE AUTOIBRS
#: RFLAGS bits a guest can hold (bit 1 reads as 1; 3, 5, 15 and 22-63 are reserved)
RFLAGS_BITS = 0x003F_7FD7
RFLAGS_VM = 1 << 17
MXCSR_BITS = 0xFFFF
#: x87 control registers that are narrower in ``struct kvm_fpu`` than gdb's 32 bits
_X87_WIDTH = {"fctrl": 16, "fstat": 16, "ftag": 16, "fop": 11}


def _canonical(value: int) -> bool:
    return value < 1 << 47 or value >= 0xFFFF_8000_0000_0000


def check_value(name: str, value: int, sregs: Any) -> None:
    """RegisterError when ``value`` cannot go into register ``name`` of a vCPU whose
    special registers are ``sregs`` (as they are now): the checks KVM_SET_REGS/SREGS/FPU
    or the next VM entry would fail on, made while the debugger can still say no."""
    if not 0 <= value < 1 << 64:
        raise RegisterError(f"{value:#x} does not fit in 64-bit register {name}")
    long_mode = bool(int(sregs.efer) & EFER_LMA)
    why = ""
    if name == "rip":
        if long_mode and int(sregs.cs.l) and not _canonical(value):
            why = "is not canonical (bits 63:47 must all be equal in 64-bit mode)"
        elif not (long_mode and int(sregs.cs.l)) and value >> 32:
            why = "does not fit in 32 bits outside 64-bit mode"
    elif name in ("rflags", "eflags"):
        if value & ~RFLAGS_BITS:
            why = f"sets reserved RFLAGS bits {value & ~RFLAGS_BITS:#x}"
        elif value & RFLAGS_VM and long_mode:
            why = "sets RFLAGS.VM (virtual-8086 mode) in long mode"
    elif name == "cr0":
        if value & ~CR0_BITS:
            why = f"sets reserved CR0 bits {value & ~CR0_BITS:#x}"
        elif value & CR0_PG and not value & CR0_PE:
            why = "sets CR0.PG without CR0.PE"
        elif value & CR0_NW and not value & CR0_CD:
            why = "sets CR0.NW without CR0.CD"
    elif name == "cr4":
        old = int(sregs.cr4)
        if value & ~CR4_BITS:
            why = f"sets reserved CR4 bits {value & ~CR4_BITS:#x}"
        elif value & (CR4_VMXE | CR4_SMXE):
            why = "sets CR4.VMXE/SMXE (VMX and SMX are not offered to guests)"
        elif (value ^ old) & CR4_LA57 and int(sregs.cr0) & CR0_PG:
            why = "changes CR4.LA57 while paging is on"
    elif name == "efer":
        if value & ~EFER_BITS:
            why = f"sets reserved EFER bits {value & ~EFER_BITS:#x}"
    elif name == "cr8":
        if value > 0xF:
            why = "is more than 4 bits (CR8 is the task priority, 0-15)"
    elif name in ("fs_base", "gs_base"):
        if not _canonical(value):
            why = "is not a canonical address"
    elif name == "mxcsr":
        if value & ~MXCSR_BITS:
            why = f"sets reserved MXCSR bits {value & ~MXCSR_BITS:#x}"
    elif name in _X87_WIDTH and value >> _X87_WIDTH[name]:
        why = f"does not fit in {_X87_WIDTH[name]} bits"
    if why:
        raise RegisterError(f"{name} = {value:#x} {why}")


def _full_tag(abridged: int) -> int:
    """FXSAVE's abridged tag byte as the x87 16-bit tag word gdb shows: valid or empty (the
    exact zero/special classes would need the register contents)."""
    return sum((0 if abridged >> i & 1 else 3) << (2 * i) for i in range(8))


def _x87_control(f: Any) -> tuple[int, ...]:
    """The x87 control registers from a ``struct kvm_fpu``, in X87_CONTROL's order."""
    return (int(f.fcw), int(f.fsw), _full_tag(int(f.ftwx)), 0, int(f.last_ip) & 0xFFFFFFFF, 0,
            int(f.last_dp) & 0xFFFFFFFF, int(f.last_opcode))


class RegisterFile:
    """The registers of one stopped vCPU, read on first use and written back by
    :meth:`commit` (only the groups that changed)."""

    def __init__(self, vcpu: Vcpu) -> None:
        self.vcpu = vcpu
        self._regs: dict[str, int] | None = None
        self._sregs: Any = None
        self._fpu: Any = None
        self._dirty: set[str] = set()

    @property
    def regs(self) -> dict[str, int]:
        if self._regs is None:
            self._regs = self.vcpu.get_regs()
        return self._regs

    @property
    def sregs(self) -> Any:
        if self._sregs is None:
            self._sregs = self.vcpu.get_sregs()
        return self._sregs

    @property
    def fpu(self) -> Any:
        if self._fpu is None:
            self._fpu = self.vcpu.get_fpu()
        return self._fpu

    def value(self, index: int) -> int:
        """Register ``index`` (gdb's number) as an unsigned integer."""
        r = LAYOUT[index]
        n = r.name
        if r.group == "regs":
            return self.regs["rflags" if n == "eflags" else n] & ((1 << (8 * r.size)) - 1)
        if r.group == "sregs":
            s = self.sregs
            if n in SEGMENTS:
                return int(getattr(s, n).selector)
            if n in ("fs_base", "gs_base"):
                return int(getattr(s, n[:2]).base)
            return int(getattr(s, n))
        f = self.fpu
        if n.startswith("st"):
            return int.from_bytes(bytes(f.fpr[int(n[2:])][0:10]), "little")
        if n.startswith("xmm"):
            return int.from_bytes(bytes(f.xmm[int(n[3:])][0:16]), "little")
        if n == "mxcsr":
            return int(f.mxcsr)
        return _x87_control(f)[X87_CONTROL.index(n)]

    def encode(self, index: int) -> bytes:
        r = LAYOUT[index]
        return self.value(index).to_bytes(r.size, "little")

    def encode_all(self) -> bytes:
        """The ``g`` packet's data (binary; the stub hex-encodes it), packed in bulk:
        gdb reads it at every stop, so it is on the single-step path."""
        r, s, f = self.regs, self.sregs, self.fpu
        fpr = cdata_bytes(f.fpr)
        return b"".join((
            _CORE.pack(*(r[n] for n in GDB_GPRS), r["rip"], r["rflags"] & 0xFFFFFFFF,
                       *(int(getattr(s, n).selector) for n in SEGMENTS)),
            b"".join(fpr[16 * i:16 * i + 10] for i in range(8)),
            _X87.pack(*_x87_control(f)),
            cdata_bytes(f.xmm), struct.pack("<I", int(f.mxcsr)),
            _SYS.pack(int(s.fs.base), int(s.gs.base), *(int(getattr(s, n)) for n in SYSTEM)),
        ))

    def set(self, index: int, data: bytes) -> None:
        """Write register ``index`` from its little-endian bytes (not yet in the vCPU)."""
        if not 0 <= index < len(LAYOUT):
            raise RegisterError(f"no register number {index}")
        r = LAYOUT[index]
        if len(data) != r.size:
            raise RegisterError(f"{r.name} is {r.size} bytes, not {len(data)}")
        v = int.from_bytes(data, "little")
        if v == self.value(index):
            return
        n = r.name
        if n in SEGMENTS:
            raise RegisterError(f"{n} cannot be changed from the debugger (the selector "
                                "needs its descriptor)")
        check_value(n, v, self.sregs)
        if r.group == "regs":
            self.regs["rflags" if n == "eflags" else n] = v
        elif r.group == "sregs":
            self._set_system(n, v)
            return  # already in the vCPU (KVM said yes) or refused
        else:
            f = self.fpu
            if n.startswith("st"):
                f.fpr[int(n[2:])][0:10] = list(data)
            elif n.startswith("xmm"):
                f.xmm[int(n[3:])][0:16] = list(data)
            elif n in ("fctrl", "fstat", "mxcsr", "fop"):
                setattr(f, {"fctrl": "fcw", "fstat": "fsw", "mxcsr": "mxcsr", "fop": "last_opcode"}[n], v)
            elif n == "ftag":
                f.ftwx = sum(1 << i for i in range(8) if (v >> (2 * i)) & 3 != 3)
            elif n == "fioff":
                f.last_ip = v
            elif n == "fooff":
                f.last_dp = v
            else:
                raise RegisterError(f"{n} cannot be changed")
        self._dirty.add(r.group)

    def _set_system(self, name: str, value: int) -> None:
        """A CR, EFER or segment base: KVM_SET_SREGS at once, so that a combination KVM
        refuses (its checks vary by host: LA57, PAE, reserved bits under the guest's CPUID)
        is refused here, with the vCPU left as it was, not at the next resume."""
        s = self.sregs
        target, field = (getattr(s, name[:2]), "base") if name in ("fs_base", "gs_base") \
            else (s, name)
        old = int(getattr(target, field))
        setattr(target, field, value)
        try:
            self.vcpu.set_sregs(s)
        except KvmError as e:
            setattr(target, field, old)
            with contextlib.suppress(KvmError):  # a refusal may have applied part of it
                self.vcpu.set_sregs(s)
            raise RegisterError(f"KVM refuses {name} = {value:#x} (KVM_SET_SREGS: "
                                f"{os.strerror(e.errno or 0)})") from None
        self._dirty.discard("sregs")  # the vCPU holds all of them now

    def set_all(self, data: bytes) -> None:
        """A ``G`` packet: every register, in gdb's order (a shorter packet sets a prefix)."""
        off = 0
        for i, r in enumerate(LAYOUT):
            if off + r.size > len(data):
                break
            self.set(i, data[off:off + r.size])
            off += r.size

    def commit(self) -> None:
        """Write the changed groups back: one ioctl per group."""
        if "regs" in self._dirty:
            self.vcpu.set_regs(self.regs)
        if "sregs" in self._dirty:
            self.vcpu.set_sregs(self.sregs)
        if "fpu" in self._dirty:
            self.vcpu.set_fpu(self.fpu)
        self._dirty.clear()
