"""The guest-physical address map pyvmm gives every VM (the standard PC places).

RAM starts at 0.  The 1 GiB below 4 GiB is the MMIO hole, where the LAPIC (0xFEE00000),
the IOAPIC (0xFEC00000) and device windows live; RAM beyond 3 GiB continues at 4 GiB.
"""

from __future__ import annotations

import functools

GiB = 1 << 30
MiB = 1 << 20
#: E820 / multiboot memory-map entry types (ACPI 6.5, 15.1): usable RAM, reserved
E820_RAM = 1
E820_RESERVED = 2
KiB = 1 << 10

MMIO_HOLE_START = 3 * GiB
MMIO_HOLE_END = 4 * GiB
HIGH_RAM_START = 4 * GiB

IOAPIC_BASE = 0xFEC00000
LAPIC_BASE = 0xFEE00000
#: Intel-only KVM scratch areas (real-mode TSS, EPT identity map), inside the hole as QEMU
TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000


def ram_ranges(mem_size: int) -> list[tuple[int, int]]:
    """``[(gpa, size), ...]`` of RAM for a VM with ``mem_size`` bytes."""
    low = min(mem_size, MMIO_HOLE_START)
    ranges = [(0, low)]
    if mem_size > low:
        ranges.append((HIGH_RAM_START, mem_size - low))
    return ranges


def parse_size(text: str, default_unit: int = 1) -> int:
    """``"64M"`` -> 67108864; K, M, G, T (binary, optional ``i``/``B``); a bare number
    counts in ``default_unit``.  A decimal fraction is taken as QEMU's ``-m`` takes it
    (``0.5G`` is 512 MiB) when it comes to a whole number of bytes.  ValueError with a
    message a user can act on."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": KiB, "M": MiB, "G": GiB, "T": 1024 * GiB}.get(t[-1:])
    digits = t[:-1] if mult else t
    unit = mult or default_unit
    whole, dot, frac = digits.partition(".")
    bad = f"not a size: {text!r} (use e.g. 64M, 0.5G or 1G)"
    if not digits.isascii() or len(digits) > 64:  # no 4300-digit int() to refuse
        raise ValueError(bad)
    if dot:
        # decimal only (no sign, no hex, no '_'): exact, in integers, never a float
        if not (whole + frac).isdigit():
            raise ValueError(bad)
        scaled, denom = int(whole + frac) * unit, int(10 ** len(frac))
        if scaled % denom:
            raise ValueError(f"size {text.strip()!r} is not a whole number of bytes")
        value = scaled // denom
    else:
        try:
            value = int(digits, 0) * unit
        except ValueError:
            raise ValueError(bad) from None
    if value <= 0:
        raise ValueError(f"size must be positive: {text!r}")
    return value


def format_size(n: int) -> str:
    """``67108864`` -> ``"64 MiB"`` (one decimal when not whole)."""
    for unit, div in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div:
            v = n / div
            return f"{v:.0f} {unit}" if v == int(v) else f"{v:.1f} {unit}"
    return f"{n} bytes"


@functools.cache
def host_memory() -> int:
    """This host's RAM in bytes (MemTotal), or 0 when /proc/meminfo cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * KiB
    except (OSError, ValueError, IndexError):
        pass
    return 0
