"""The real-mode state a BIOS leaves: an IVT whose 256 vectors point at an IRET, and the
in-kernel 8259 PICs initialised as firmware does (master vectors 0x08-0x0f, slave
0x70-0x77, only IRQ0 and the cascade unmasked)."""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from pyvmm._native import lib

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm
    from pyvmm.memory import GuestMemory

IRET_SEG, IRET_OFF = 0xF000, 0xFF53  # where PC BIOSes keep their dummy IRET
IRET = 0xCF


def write_ivt(memory: GuestMemory) -> None:
    memory.write(0, struct.pack("<HH", IRET_OFF, IRET_SEG) * 256)
    memory.write((IRET_SEG << 4) + IRET_OFF, bytes([IRET]))


def init_pics(vm: Vm) -> None:
    """ICW1-ICW4 as a BIOS sends them, written directly into KVM's PIC state."""
    for chip_id, base, imr in ((lib.KVM_IRQCHIP_PIC_MASTER, 0x08, 0xFA),
                               (lib.KVM_IRQCHIP_PIC_SLAVE, 0x70, 0xFF)):
        chip = vm.get_irqchip_pic(chip_id)
        pic = lib.pyvmm_irqchip_pic(chip)
        pic.irq_base = base
        pic.imr = imr
        pic.init_state = 0  # initialisation complete
        pic.init4 = 1
        pic.auto_eoi = 0
        vm.set_irqchip(chip)
