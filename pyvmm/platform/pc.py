"""QEMU's PC as a ``-kernel`` guest sees it, without firmware.

fw_cfg, pc-testdev, the Bochs shutdown port, PCI configuration mechanism #1 (no devices),
the ACPI PM block (S3 and S5) and tables (RSDP/RSDT/FADT/FACS/DSDT/MADT/HPET), the HPET,
RTC/CMOS, and the state a BIOS leaves: the IVT with an INT 08h tick counter, the PICs
initialised, PIT channel 0 at 18.2 Hz with one tick latched in the PIC at entry, and the
interrupt wiring of every PC (ISA IRQ 0 on PIC pin 0 and IOAPIC pin 2, IRQ n on IOAPIC
pin n).  The PIT comes with ``Machine(pit=True)``.
"""

from __future__ import annotations

from pyvmm.devices.acpi_pm import AcpiPm
from pyvmm.devices.bochs_shutdown import BochsShutdown
from pyvmm.devices.fastpath import Space
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.hpet import GCAP_ID, Hpet
from pyvmm.devices.pc_testdev import PcTestFlush, PcTestIomem, PcTestIrq, PcTestScratch
from pyvmm.devices.pci_config import PciConfigMech1
from pyvmm.devices.rtc import Rtc
from pyvmm.kvm.vcpu import MP_STATE_UNINITIALIZED
from pyvmm.kvm.vm import IOAPIC, PIC_MASTER, PIC_SLAVE
from pyvmm.platform import acpi, bios
from pyvmm.vstate.result import Outcome, RunStatus
from pyvmm.x86.entry import EntryState, apply_entry

IOAPIC_PINS = 24
#: the first address real mode's segment:offset (CS = address >> 4) cannot reach
REAL_MODE_LIMIT = 0x100000


class ResumeError(Exception):
    """The guest left S3 nowhere to resume (its waking vector); the run ends as a guest
    crash with this message."""


def pc_gsi_routes() -> list[tuple[int, int, int]]:
    """The GSI routing of a PC (and of QEMU's): GSI n raises PIC pin n and IOAPIC pin n,
    except GSI 0 (ISA IRQ 0, the PIT), which is wired to IOAPIC pin 2 as the MADT's
    interrupt source override says; GSI 2 is the PICs' cascade.  KVM's default puts IRQ 0
    on IOAPIC pin 0, where no PC has it."""
    routes = [(i, PIC_MASTER, i) for i in range(8) if i != 2]
    routes += [(i, PIC_SLAVE, i - 8) for i in range(8, 16)]
    routes += [(i, IOAPIC, 2 if i == 0 else i) for i in range(IOAPIC_PINS) if i != 2]
    return routes


TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    import threading
    from collections.abc import Sequence
    from typing import Protocol

    from pyvmm.devices.base import Device
    from pyvmm.kvm.vcpu import Vcpu
    from pyvmm.kvm.vm import Vm
    from pyvmm.memory import GuestMemory

    class PcMachine(Protocol):
        """What the PC platform needs of the machine it joins (``Machine`` is one): its RAM
        and shape, its VM fd (interrupt lines, GSI routes, PIC/PIT set-up) and its bus."""

        mem_size: int
        cpus: int
        irqchip: str
        pit: bool

        @property
        def memory(self) -> GuestMemory: ...

        @property
        def vm(self) -> Vm: ...

        def add_device(self, space: Space, base: int, length: int, device: Device) -> None: ...


class PcPlatform:
    """The PC devices of one machine (``machine.pc``), for tests and tools to inspect."""

    def __init__(self, m: PcMachine) -> None:
        low = sum(r.size for r in m.memory.regions if r.gpa < 1 << 32 and not r.readonly)
        high = sum(r.size for r in m.memory.regions if r.gpa >= 1 << 32)
        self.fw_cfg = FwCfg(m.mem_size, m.cpus)
        self.testdev = PcTestScratch()
        self.testdev_flush = PcTestFlush(m.memory)
        self.testdev_irq = PcTestIrq(m.vm.irq_line if m.irqchip != "none" else None)
        self.testdev_iomem = PcTestIomem()
        self.rtc = Rtc(low, high)
        self.acpi_pm = AcpiPm()
        kernel_chip = m.irqchip == "kernel"
        self._vm, self._kernel_chip, self._pit = m.vm, kernel_chip, m.pit
        self.hpet = Hpet(m.vm.irq_line if kernel_chip else lambda gsi, level: None,
                         (lambda on: bios.pit_hpet_legacy(m.vm, on)) if m.pit else lambda on: None)
        for dev in (self.fw_cfg, self.testdev, self.testdev_flush, self.testdev_irq,
                    self.testdev_iomem, self.hpet, BochsShutdown(), PciConfigMech1(), self.acpi_pm,
                    self.rtc):
            for space, base, n in dev.ranges():  # each device knows where it answers
                m.add_device(space, base, n, dev)
        addr, tables, self.facs_addr = acpi.build(m.cpus, GCAP_ID & 0xFFFFFFFF)
        m.memory.write(addr, tables)
        self.memory = m.memory
        bios.write_ivt(m.memory)
        if kernel_chip:
            m.vm.set_gsi_routing(pc_gsi_routes())
            bios.init_pics(m.vm)
            if m.pit:
                bios.start_pit(m.vm)
                bios.latch_pit_tick(m.vm)

    def waking_vector(self) -> int:
        """The FACS's firmware waking vector: where the BSP resumes from S3, in real mode."""
        return self.memory.read_int(self.facs_addr + 12, 4)

    def resume_entry(self) -> EntryState:
        """Where the firmware's S3 resume path jumps: the FACS's Firmware_Waking_Vector in
        real mode, ``(vector >> 4):(vector & 0xF)`` as ACPI prescribes for PCs.  As with
        SeaBIOS under QEMU, X_Firmware_Waking_Vector is not used (our FACS offers no 64-bit
        wake, and this firmware resumes in real mode only).  The vector is the guest's own
        value: one real mode cannot reach (0, or at or above 1 MiB, where a PC's firmware
        jumps to a truncated address) is a :class:`ResumeError`, a guest fault."""
        vector = self.waking_vector()
        if vector == 0:
            xvec = self.memory.read_int(self.facs_addr + 24, 8)
            extra = (f" (X_Firmware_Waking_Vector {xvec:#x} is not used: this firmware resumes "
                     "in real mode only)") if xvec else ""
            raise ResumeError(f"ACPI S3 resume: the FACS firmware waking vector is 0{extra}; "
                              "the guest cannot resume")
        if vector >= REAL_MODE_LIMIT:
            raise ResumeError(f"ACPI S3 resume: the FACS firmware waking vector {vector:#x} is "
                              "at or above 1 MiB, out of real mode's reach; the guest cannot resume")
        return EntryState.real_mode(vector)

    def seconds_to_wake(self) -> float | None:
        """How long an S3 sleep lasts: until the RTC alarm, when the guest armed it (status
        B's AIE) and enabled it as a wake source (PM1a_EN.RTC_EN); None: no wake-up."""
        if not self.acpi_pm.en & AcpiPm.RTC_EN:
            return None
        return self.rtc.seconds_to_alarm()

    def woke(self) -> None:
        self.acpi_pm.wake()

    def reset_after_sleep(self) -> None:
        """What the chipset and the firmware's resume path redo after S3: PICs and PIT as a
        BIOS leaves them, the HPET disabled.  RAM, and so the IVT and ACPI tables, stay."""
        if self._kernel_chip:
            bios.init_pics(self._vm)
            if self._pit:
                bios.start_pit(self._vm)
        self.hpet.reset()

    def sleep_s3(self, vcpus: Sequence[Vcpu], reset_lapics: Sequence[bytes | None],
                 left: float | None, stop: threading.Event) -> bool | Outcome:
        """The guest entered ACPI S3: sleep until the wake-up (the RTC alarm), then reset
        every vCPU as the chipset does (``reset_lapics``: each LAPIC as firmware left it),
        RAM kept, and let the BSP resume in real mode at the FACS's waking vector.  False
        when no wake-up comes in time; a crash outcome when the guest's waking vector
        cannot be resumed at."""
        wait = self.seconds_to_wake()
        if wait is None or (left is not None and wait > left):
            stop.wait(left)  # asleep for good: until the timeout, a stop or a signal
            return False
        if stop.wait(wait):
            return False
        try:
            entry = self.resume_entry()
        except ResumeError as e:  # the guest's value: a guest fault, never a usage error
            return Outcome(RunStatus.CRASH, vcpus[0].id, reason=str(e))
        for vcpu, lapic in zip(vcpus, reset_lapics, strict=True):
            if lapic is not None:
                vcpu.set_lapic(lapic)
            if vcpu.id:
                vcpu.set_mp_state(MP_STATE_UNINITIALIZED)  # APs wait for INIT/SIPI again
        self.reset_after_sleep()
        apply_entry(vcpus[0], entry)
        self.woke()
        return True
