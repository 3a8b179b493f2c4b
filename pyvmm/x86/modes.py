"""CPU modes: the control-register and EFER bits (defined here once), which paging a vCPU
uses (:func:`paging_mode`), and the control registers and segments for starting a vCPU
in a mode."""

from __future__ import annotations

from pyvmm.x86.msrs import EFER_LMA as EFER_LMA
from pyvmm.x86.msrs import EFER_LME, EFER_NXE
from pyvmm.x86.segments import CODE32, CODE64, DATA, GDT_SIZE

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

CR0_PE = 1 << 0
CR0_MP = 1 << 1
CR0_ET = 1 << 4
CR0_NE = 1 << 5
CR0_WP = 1 << 16
CR0_AM = 1 << 18
CR0_NW = 1 << 29
CR0_CD = 1 << 30
CR0_PG = 1 << 31
CR4_PSE = 1 << 4
CR4_PAE = 1 << 5
CR4_OSFXSR = 1 << 9
CR4_OSXMMEXCPT = 1 << 10
CR4_LA57 = 1 << 12
CR4_VMXE = 1 << 13
CR4_SMXE = 1 << 14

LONG_MODE_CR0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_PG
LONG_MODE_CR4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
LONG_MODE_EFER = EFER_LME | EFER_LMA | EFER_NXE


#: paging modes (Intel SDM vol. 3A 4.1.1), as paging_mode() names them
PAGING_NONE = "none"
PAGING_32BIT = "32-bit"
PAGING_32BIT_PSE = "32-bit+pse"  # 32-bit paging with 4 MiB pages allowed (CR4.PSE)
PAGING_PAE = "pae"
PAGING_4LEVEL = "4-level"
PAGING_5LEVEL = "5-level"


def paging_mode(sregs: Any) -> str:
    """Which paging the vCPU with these special registers uses: decided by CR0.PG,
    EFER.LMA, CR4.PAE, CR4.PSE and CR4.LA57, once, here (the debugger, the crash report
    and the core all ask)."""
    if not int(sregs.cr0) & CR0_PG:
        return PAGING_NONE
    cr4 = int(sregs.cr4)
    if int(sregs.efer) & EFER_LMA:
        return PAGING_5LEVEL if cr4 & CR4_LA57 else PAGING_4LEVEL
    if cr4 & CR4_PAE:
        return PAGING_PAE
    return PAGING_32BIT_PSE if cr4 & CR4_PSE else PAGING_32BIT


def set_long_mode(sregs: Any, *, cr3: int, gdt_base: int) -> None:
    """64-bit mode with 4-level paging rooted at ``cr3``, flat segments from our GDT.

    Paging is on together with EFER.LME, the only paging setup kvm_pvm accepts.
    """
    CODE64.fill(sregs.cs)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        DATA.fill(seg)
    sregs.gdt.base = gdt_base
    sregs.gdt.limit = GDT_SIZE - 1
    sregs.idt.base = 0
    sregs.idt.limit = 0
    sregs.cr0 = LONG_MODE_CR0
    sregs.cr3 = cr3
    sregs.cr4 = LONG_MODE_CR4
    sregs.efer = LONG_MODE_EFER


def set_real_mode(sregs: Any, cs: int) -> None:
    """Real mode as after INIT/SIPI: CS = ``cs`` (base cs << 4), other segments 0, 64 KiB
    limits, paging and protection off, IDT at 0 with the real-mode limit."""
    segs = (sregs.cs, sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss)
    for i, seg in enumerate(segs):
        seg.selector = cs if i == 0 else 0
        seg.base = seg.selector << 4
        seg.limit = 0xFFFF
        seg.type = 0xB if i == 0 else 0x3
        seg.present, seg.s, seg.dpl, seg.db, seg.l, seg.g, seg.avl, seg.unusable = 1, 1, 0, 0, 0, 0, 0, 0
    sregs.gdt.base, sregs.gdt.limit = 0, 0xFFFF
    sregs.idt.base, sregs.idt.limit = 0, 0x3FF
    sregs.cr0 = CR0_ET | (1 << 29) | (1 << 30)  # CD | NW, as at reset
    sregs.cr3 = sregs.cr4 = sregs.efer = 0


def set_protected_mode(sregs: Any, *, gdt_base: int) -> None:
    """32-bit protected mode, paging off, flat segments (the multiboot entry state)."""
    CODE32.fill(sregs.cs)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        DATA.fill(seg)
    sregs.gdt.base = gdt_base
    sregs.gdt.limit = GDT_SIZE - 1
    sregs.idt.base, sregs.idt.limit = 0, 0x3FF
    sregs.cr0 = CR0_PE | CR0_ET
    sregs.cr3 = sregs.cr4 = sregs.efer = 0
