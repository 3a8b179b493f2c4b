"""Deprecated home of three unrelated legacy PC devices, one file each now:
:mod:`pyvmm.devices.bochs_shutdown`, :mod:`pyvmm.devices.pci_config` and
:mod:`pyvmm.devices.acpi_pm`.  Kept so that old imports go on working."""

from pyvmm.devices.acpi_pm import PM_BASE, PM_TIMER, PM_TIMER_HZ, AcpiPm
from pyvmm.devices.bochs_shutdown import BOCHS_SHUTDOWN_PORT, BochsShutdown
from pyvmm.devices.pci_config import PCI_CONFIG_ADDRESS, PCI_CONFIG_DATA, PciConfigMech1

__all__ = ["BOCHS_SHUTDOWN_PORT", "PCI_CONFIG_ADDRESS", "PCI_CONFIG_DATA", "PM_BASE", "PM_TIMER",
           "PM_TIMER_HZ", "AcpiPm", "BochsShutdown", "PciConfigMech1"]
