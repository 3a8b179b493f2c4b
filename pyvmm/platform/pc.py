"""QEMU's PC as a ``-kernel`` guest sees it, without firmware.

fw_cfg, pc-testdev, the Bochs shutdown port, PCI configuration mechanism #1 (no devices),
the ACPI PM timer and tables (RSDP/RSDT/FADT/MADT), RTC/CMOS, an IVT of IRETs and the PICs
initialised as a BIOS leaves them.  The PIT comes with ``Machine(pit=True)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyvmm.devices.fw_cfg import FW_CFG_PORT_SEL, FwCfg
from pyvmm.devices.legacy import (
    BOCHS_SHUTDOWN_PORT,
    PCI_CONFIG_ADDRESS,
    PM_BASE,
    AcpiPm,
    BochsShutdown,
    PciConfigMech1,
)
from pyvmm.devices.pc_testdev import (
    FLUSH_PORT,
    IOMEM_BASE,
    IOMEM_LEN,
    IRQ_LINES,
    IRQ_PORT,
    SCRATCH_PORT,
    PcTestFlush,
    PcTestIomem,
    PcTestIrq,
    PcTestScratch,
)
from pyvmm.devices.rtc import Rtc
from pyvmm.platform import acpi, bios
from pyvmm.vstate.fastpath import Space

if TYPE_CHECKING:
    from pyvmm.machine import Machine


class PcPlatform:
    """The PC devices of one machine (``machine.pc``), for tests and tools to inspect."""

    def __init__(self, m: Machine) -> None:
        low = sum(r.size for r in m.memory.regions if r.gpa < 1 << 32 and not r.readonly)
        high = sum(r.size for r in m.memory.regions if r.gpa >= 1 << 32)
        self.fw_cfg = FwCfg(m.mem_size, m.cpus)
        self.testdev = PcTestScratch()
        self.testdev_flush = PcTestFlush(m.memory)
        self.testdev_irq = PcTestIrq(m.vm.irq_line if m.irqchip != "none" else None)
        self.testdev_iomem = PcTestIomem()
        self.rtc = Rtc(low, high)
        self.acpi_pm = AcpiPm()
        for space, base, n, dev in (
                (Space.PIO, FW_CFG_PORT_SEL, 2, self.fw_cfg),
                (Space.PIO, SCRATCH_PORT, 4, self.testdev),
                (Space.PIO, FLUSH_PORT, 4, self.testdev_flush),
                (Space.PIO, IRQ_PORT, IRQ_LINES, self.testdev_irq),
                (Space.MMIO, IOMEM_BASE, IOMEM_LEN, self.testdev_iomem),
                (Space.PIO, BOCHS_SHUTDOWN_PORT, 1, BochsShutdown()),
                (Space.PIO, PCI_CONFIG_ADDRESS, 8, PciConfigMech1()),
                (Space.PIO, PM_BASE, 12, self.acpi_pm),
                (Space.PIO, 0x70, 2, self.rtc)):
            m.add_device(space, base, n, dev)
        addr, tables = acpi.build(m.cpus)
        m.memory.write(addr, tables)
        bios.write_ivt(m.memory)
        if m.irqchip == "kernel":
            bios.init_pics(m.vm)


def add_pc_platform(m: Machine) -> PcPlatform:
    """Give ``m`` the PC devices and firmware state; returns them."""
    return PcPlatform(m)
