"""Minimal ACPI tables (ACPI spec 1.0 layouts): RSDP -> RSDT -> FADT (+ empty DSDT) and
MADT, placed in the BIOS area where an OS looks for the RSDP (16-byte aligned in
0xE0000-0xFFFFF).  Every table carries a valid checksum."""

from __future__ import annotations

import struct

from pyvmm.devices.legacy import PM_BASE, PM_TIMER
from pyvmm.x86.layout import IOAPIC_BASE, LAPIC_BASE

ACPI_BASE = 0xE0000
OEM_ID = b"PYVMM "
OEM_TABLE = b"PYVMMVM "
FADT_FLAG_TMR_VAL_EXT = 1 << 8  # the PM timer is 32 bits wide
SCI_IRQ = 9


def checksum(data: bytes) -> int:
    """The byte that makes ``data`` sum to 0 mod 256."""
    return (-sum(data)) & 0xFF


def _table(sig: bytes, body: bytes, revision: int = 1) -> bytes:
    length = 36 + len(body)
    head = struct.pack("<4sIBB6s8sI4sI", sig, length, revision, 0, OEM_ID, OEM_TABLE, 1,
                       b"PYVM", 1)
    t = bytearray(head + body)
    t[9] = checksum(bytes(t))
    return bytes(t)


def fadt(dsdt: int) -> bytes:
    body = bytearray(116 - 36)

    def put(off: int, fmt: str, v: int) -> None:
        struct.pack_into(fmt, body, off - 36, v)

    put(40, "<I", dsdt)
    put(46, "<H", SCI_IRQ)
    put(56, "<I", PM_BASE)      # PM1a_EVT_BLK
    put(64, "<I", PM_BASE + 4)  # PM1a_CNT_BLK
    put(76, "<I", PM_TIMER)     # PM_TMR_BLK
    put(88, "<B", 4)            # PM1_EVT_LEN
    put(89, "<B", 2)            # PM1_CNT_LEN
    put(91, "<B", 4)            # PM_TMR_LEN
    put(112, "<I", FADT_FLAG_TMR_VAL_EXT)
    return _table(b"FACP", bytes(body))


def madt(ncpus: int, ioapic_id: int) -> bytes:
    body = struct.pack("<II", LAPIC_BASE, 1)  # local APIC address, PCAT_COMPAT (8259s present)
    for cpu in range(ncpus):
        body += struct.pack("<BBBBI", 0, 8, cpu, cpu, 1)  # processor local APIC, enabled
    body += struct.pack("<BBBBII", 1, 12, ioapic_id, 0, IOAPIC_BASE, 0)  # IOAPIC, GSI base 0
    return _table(b"APIC", body)


def build(ncpus: int, base: int = ACPI_BASE) -> tuple[int, bytes]:
    """``(address, bytes)`` of the whole ACPI block: RSDP at ``base``, tables after it."""
    dsdt_addr = base + 0x40
    dsdt = _table(b"DSDT", b"")  # no AML: nothing for an OS to evaluate
    fadt_addr = dsdt_addr + 0x40
    f = fadt(dsdt_addr)
    madt_addr = fadt_addr + ((len(f) + 15) & ~15)
    m = madt(ncpus, ioapic_id=ncpus)
    rsdt_addr = madt_addr + ((len(m) + 15) & ~15)
    rsdt = _table(b"RSDT", struct.pack("<II", fadt_addr, madt_addr))
    rsdp = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt_addr))
    rsdp[8] = checksum(bytes(rsdp))
    blob = bytearray(rsdt_addr - base + len(rsdt))
    for addr, data in ((base, rsdp), (dsdt_addr, dsdt), (fadt_addr, f), (madt_addr, m),
                       (rsdt_addr, rsdt)):
        blob[addr - base:addr - base + len(data)] = data
    return base, bytes(blob)
