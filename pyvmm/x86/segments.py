"""Flat GDT and the matching ``kvm_segment`` values (Intel SDM vol. 3A ch. 3.4.5).

The GDT goes into guest memory so that the guest can reload segments (``mov %ds``,
``lret``, IRETQ) and get what KVM_SET_SREGS gave it.
"""

from __future__ import annotations

import struct

from pyvmm.record import FrozenRecord

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

SEL_CODE64 = 0x08
SEL_DATA = 0x10
SEL_CODE32 = 0x18
GDT_ENTRIES = 4
GDT_SIZE = GDT_ENTRIES * 8


class Segment(FrozenRecord):
    """A code or data segment in the terms of ``struct kvm_segment``."""

    _fields = ("selector", "type", "l", "db", "base", "limit", "g", "s", "dpl", "present")
    selector: int
    type: int  # 0xB = execute/read accessed, 0x3 = read/write accessed
    l: int  # 64-bit code  # noqa: E741 - the SDM's name
    db: int  # default operand size 32
    base: int
    limit: int
    g: int
    s: int
    dpl: int
    present: int

    def __init__(self, selector: int, type: int, l: int, db: int, base: int = 0,  # noqa: E741
                 limit: int = 0xFFFFFFFF, g: int = 1, s: int = 1, dpl: int = 0,
                 present: int = 1) -> None:
        self._set(selector=selector, type=type, l=l, db=db, base=base, limit=limit, g=g, s=s,
                  dpl=dpl, present=present)

    def descriptor(self) -> int:
        """The 8-byte GDT descriptor for this segment."""
        lim = self.limit >> 12 if self.g else self.limit
        access = (self.present << 7) | (self.dpl << 5) | (self.s << 4) | self.type
        flags = (self.g << 3) | (self.db << 2) | (self.l << 1)
        return ((lim & 0xFFFF) | ((self.base & 0xFFFFFF) << 16) | (access << 40)
                | (((lim >> 16) & 0xF) << 48) | (flags << 52) | (((self.base >> 24) & 0xFF) << 56))

    def fill(self, kseg: Any) -> None:
        """Copy into a cffi ``struct kvm_segment``."""
        for name in ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g"):
            setattr(kseg, name, getattr(self, name))
        kseg.avl = 0
        kseg.unusable = 0


CODE64 = Segment(SEL_CODE64, 0xB, l=1, db=0)
DATA = Segment(SEL_DATA, 0x3, l=0, db=1)
CODE32 = Segment(SEL_CODE32, 0xB, l=0, db=1)


def gdt_bytes() -> bytes:
    """null, 64-bit code (0x08), flat data (0x10), 32-bit code (0x18)."""
    return struct.pack("<4Q", 0, CODE64.descriptor(), DATA.descriptor(), CODE32.descriptor())
