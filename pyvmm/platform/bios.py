"""The state a PC BIOS leaves behind, without running one.

- the real-mode IVT: every vector at a dummy IRET (F000:FF53), except INT 08h (IRQ 0 with
  the master PIC based at 8), whose handler at F000:FEA5 counts timer ticks in the BIOS data
  area (0x46C, with the midnight roll-over at 0x1800B0 ticks and the flag at 0x470) and
  acknowledges the PIC, as every BIOS's does;
- the in-kernel 8259 PICs initialised as firmware does (master vectors 0x08-0x0f, slave
  0x70-0x77, only IRQ 0 and the cascade unmasked);
- PIT channel 0 counting in mode 3 with divisor 65536: IRQ 0 at 18.2 Hz;
- and, at boot, one tick of it latched in the master PIC's IRR and not yet taken: a BIOS
  loads the kernel with interrupts off while the PIT keeps ticking, so a kernel finds IRQ 0
  pending at entry (QEMU with SeaBIOS: IRR bit 0 set at entry in every run we measured,
  guests/mb_stiwin.S) and takes it at once when it enables interrupts.
"""

from __future__ import annotations

import struct

from pyvmm.kvm.vm import PIC_MASTER, PIC_SLAVE, PIT_FLAGS_HPET_LEGACY, Vm
from pyvmm.memory import GuestMemory

BIOS_SEG = 0xF000
IRET_OFF = 0xFF53  # where PC BIOSes keep their dummy IRET
INT08_OFF = 0xFEA5  # where PC BIOSes keep their IRQ 0 handler
IRET = 0xCF
BDA_TICKS = 0x46C
BDA_MIDNIGHT = 0x470
TICKS_PER_DAY = 0x1800B0
IRQ0 = 1 << 0  # the PIT's pin on the master PIC

#: INT 08h, real mode (hand-assembled; offsets are the BDA's, DS = 0)
INT08 = bytes([
    0x1E,                          # push ds
    0x50,                          # push ax
    0x31, 0xC0,                    # xor ax, ax
    0x8E, 0xD8,                    # mov ds, ax
    0x83, 0x06, 0x6C, 0x04, 0x01,  # add word [0x46c], 1
    0x83, 0x16, 0x6E, 0x04, 0x00,  # adc word [0x46e], 0
    0x83, 0x3E, 0x6E, 0x04, 0x18,  # cmp word [0x46e], 0x18   (0x1800B0 ticks: midnight)
    0x72, 0x19,                    # jb done
    0x81, 0x3E, 0x6C, 0x04, 0xB0, 0x00,  # cmp word [0x46c], 0xb0
    0x72, 0x11,                    # jb done
    0xC7, 0x06, 0x6C, 0x04, 0x00, 0x00,  # mov word [0x46c], 0
    0xC7, 0x06, 0x6E, 0x04, 0x00, 0x00,  # mov word [0x46e], 0
    0xC6, 0x06, 0x70, 0x04, 0x01,  # mov byte [0x470], 1
    0xB0, 0x20,                    # done: mov al, 0x20
    0xE6, 0x20,                    # out 0x20, al   (EOI to the master PIC)
    0x58,                          # pop ax
    0x1F,                          # pop ds
    0xCF,                          # iret
])


def write_ivt(memory: GuestMemory) -> None:
    ivt = bytearray(struct.pack("<HH", IRET_OFF, BIOS_SEG) * 256)
    struct.pack_into("<HH", ivt, 8 * 4, INT08_OFF, BIOS_SEG)
    memory.write(0, bytes(ivt))
    memory.write((BIOS_SEG << 4) + IRET_OFF, bytes([IRET]))
    memory.write((BIOS_SEG << 4) + INT08_OFF, INT08)
    memory.write(BDA_TICKS, bytes(5))


def init_pics(vm: Vm) -> None:
    """ICW1-ICW4 as a BIOS sends them, written directly into KVM's PIC state."""
    for chip_id, base, imr in ((PIC_MASTER, 0x08, 0xFA), (PIC_SLAVE, 0x70, 0xFF)):
        # ICW4 needed, edge-triggered, vectors at base, initialisation complete
        vm.update_pic(chip_id, irq_base=base, imr=imr, init_state=0, init4=1, auto_eoi=0)


def start_pit(vm: Vm) -> None:
    """Channel 0: mode 3 (square wave), lobyte/hibyte access, count 0 (65536), gate up;
    KVM starts counting when the state is set.  Channel 2 (the speaker) stays gated."""
    st = vm.get_pit2()
    ch = st.channels[0]
    ch.count, ch.mode, ch.rw_mode, ch.gate = 0x10000, 3, 3, 1
    ch.read_state = ch.write_state = 3
    st.flags &= ~PIT_FLAGS_HPET_LEGACY
    vm.set_pit2(st)


def latch_pit_tick(vm: Vm) -> None:
    """IRQ 0 latched in the master PIC's IRR, as the BIOS's last tick before the kernel's
    entry leaves it: the 8259 is edge-triggered, so the bit stays set (masked or not) until
    the CPU acknowledges it.  ``last_irr`` stays clear: the PIT's next tick is a new edge.
    Only at boot; the firmware's S3 resume path does not load a kernel."""
    pic = vm.pic_state(PIC_MASTER)
    vm.update_pic(PIC_MASTER, irr=pic["irr"] | IRQ0, last_irr=pic["last_irr"] & ~IRQ0)


def pit_hpet_legacy(vm: Vm, on: bool) -> None:
    """The HPET's legacy replacement route takes IRQ 0 over from the PIT (and gives it back)."""
    st = vm.get_pit2()
    st.flags = (st.flags | PIT_FLAGS_HPET_LEGACY) if on else (st.flags & ~PIT_FLAGS_HPET_LEGACY)
    vm.set_pit2(st)
