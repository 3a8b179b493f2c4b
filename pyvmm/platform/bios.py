"""The real-mode state a BIOS leaves: an IVT whose 256 vectors point at an IRET, and the
in-kernel 8259 PICs initialised as firmware does (master vectors 0x08-0x0f, slave
0x70-0x77, only IRQ0 and the cascade unmasked)."""

from __future__ import annotations

import struct

from pyvmm.kvm.vm import PIC_MASTER, PIC_SLAVE, Vm
from pyvmm.memory import GuestMemory

IRET_SEG, IRET_OFF = 0xF000, 0xFF53  # where PC BIOSes keep their dummy IRET
IRET = 0xCF


def write_ivt(memory: GuestMemory) -> None:
    memory.write(0, struct.pack("<HH", IRET_OFF, IRET_SEG) * 256)
    memory.write((IRET_SEG << 4) + IRET_OFF, bytes([IRET]))


def init_pics(vm: Vm) -> None:
    """ICW1-ICW4 as a BIOS sends them, written directly into KVM's PIC state."""
    for chip_id, base, imr in ((PIC_MASTER, 0x08, 0xFA), (PIC_SLAVE, 0x70, 0xFF)):
        # ICW4 needed, edge-triggered, vectors at base, initialisation complete
        vm.update_pic(chip_id, irq_base=base, imr=imr, init_state=0, init4=1, auto_eoi=0)
