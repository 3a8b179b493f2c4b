"""What a BIOS would have left behind, for kernels that expect a PC: ACPI tables, the
real-mode IVT, the PIC programmed as firmware does."""
