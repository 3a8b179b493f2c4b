"""Machine platforms: what a guest expects around it besides RAM and vCPUs.

``pc``: QEMU's PC as a ``-kernel`` guest sees it, without firmware (fw_cfg, pc-testdev,
ACPI tables, PM timer, RTC/CMOS, the IVT and PICs as a BIOS leaves them).
"""
