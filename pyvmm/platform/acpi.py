"""ACPI tables as QEMU's PC firmware gives them (ACPI 1.0 layouts; ACPI spec ch. 5).

RSDP -> RSDT -> FADT (-> FACS, DSDT), MADT, HPET, placed in the BIOS area where an OS looks
for the RSDP (16-byte aligned in 0xE0000-0xFFFFF).  Every table carries a valid checksum.

- FADT: the PIIX4-style PM block of QEMU's PC at 0x600 (PM1a event 0x600, PM1a control
  0x604, PM timer 0x608, 32-bit), SCI on IRQ 9, and the FACS for S3's waking vector.
- DSDT: no devices, only the sleep-state packages OSes read: ``_S3`` (SLP_TYP 1) and
  ``_S5`` (SLP_TYP 0), QEMU's values for its PC.
- MADT: a LAPIC per vCPU, the IOAPIC, the interrupt source overrides of every PC (ISA IRQ 0,
  the PIT, on GSI 2; the SCI level-triggered), and PCAT_COMPAT: a legacy PIC is present.
- HPET: the event-timer block at 0xFED00000.
"""

from __future__ import annotations

import struct

from pyvmm.devices.acpi_pm import PM_BASE, PM_TIMER
from pyvmm.devices.hpet import HPET_BASE
from pyvmm.x86.layout import IOAPIC_BASE, LAPIC_BASE

ACPI_BASE = 0xE0000
OEM_ID = b"PYVMM "
OEM_TABLE = b"PYVMMVM "
FADT_FLAG_TMR_VAL_EXT = 1 << 8  # the PM timer is 32 bits wide
SCI_IRQ = 9
#: SLP_TYP values of the DSDT's sleep packages (QEMU's PC: S3 = 1, S5 = 0)
SLP_TYP_S3 = 1
SLP_TYP_S5 = 0
FACS_SIZE = 64
#: MADT interrupt source override flags: polarity active high (1), trigger level (3 << 2)
MPS_LEVEL_HIGH = 0x1 | 0xC


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


def _sleep_package(name: bytes, slp_typ: int) -> bytes:
    """AML ``Name(_Sx_, Package(4) {typ, typ, 0, 0})`` (ACPI spec 19.2: NameOp 0x08,
    PackageOp 0x12, a one-byte PkgLength, NumElements, then ByteConst/ZeroOp/OneOp)."""
    def const(v: int) -> bytes:
        return {0: b"\x00", 1: b"\x01"}.get(v, b"\x0a" + bytes([v]))

    elements = const(slp_typ) * 2 + b"\x00\x00"
    package = bytes([4]) + elements  # NumElements, then the elements
    return b"\x08" + name + b"\x12" + bytes([len(package) + 1]) + package


def dsdt() -> bytes:
    return _table(b"DSDT", _sleep_package(b"_S3_", SLP_TYP_S3) + _sleep_package(b"_S5_", SLP_TYP_S5))


def facs() -> bytes:
    """FACS (not a standard-header table, no checksum): signature, length, hardware
    signature, firmware waking vector (32-bit, real mode), global lock, flags, 64-bit
    waking vector, version."""
    return struct.pack("<4sIIIIIQB31x", b"FACS", FACS_SIZE, 0, 0, 0, 0, 0, 1)


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(116 - 36)

    def put(off: int, fmt: str, v: int) -> None:
        struct.pack_into(fmt, body, off - 36, v)

    put(36, "<I", facs_addr)    # FIRMWARE_CTRL
    put(40, "<I", dsdt_addr)
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
    # interrupt source overrides: bus 0 (ISA), source IRQ, GSI, MPS flags
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)  # the PIT: IRQ 0 on GSI 2
    body += struct.pack("<BBBBIH", 2, 10, 0, SCI_IRQ, SCI_IRQ, MPS_LEVEL_HIGH)
    return _table(b"APIC", body)


def hpet_table(gcap_id_low: int) -> bytes:
    """The HPET description table: event timer block ID (GCAP_ID bits 0-31), its base as a
    Generic Address Structure (system memory, 64-bit), HPET number 0, minimum clock tick,
    no page protection."""
    body = struct.pack("<IBBBBQBHB", gcap_id_low, 0, 64, 0, 0, HPET_BASE, 0, 0x80, 0)
    return _table(b"HPET", body)


def build(ncpus: int, hpet_id: int, base: int = ACPI_BASE) -> tuple[int, bytes, int]:
    """``(address, bytes, facs_address)`` of the whole ACPI block: RSDP at ``base``, the
    FACS 64-byte aligned, then the tables."""
    facs_addr = base + 0x40
    dsdt_addr = facs_addr + FACS_SIZE
    d = dsdt()
    fadt_addr = dsdt_addr + ((len(d) + 15) & ~15)
    f = fadt(facs_addr, dsdt_addr)
    madt_addr = fadt_addr + ((len(f) + 15) & ~15)
    m = madt(ncpus, ioapic_id=ncpus)
    hpet_addr = madt_addr + ((len(m) + 15) & ~15)
    h = hpet_table(hpet_id)
    rsdt_addr = hpet_addr + ((len(h) + 15) & ~15)
    rsdt = _table(b"RSDT", struct.pack("<III", fadt_addr, madt_addr, hpet_addr))
    rsdp = bytearray(struct.pack("<8sB6sBI", b"RSD PTR ", 0, OEM_ID, 0, rsdt_addr))
    rsdp[8] = checksum(bytes(rsdp))
    blob = bytearray(rsdt_addr - base + len(rsdt))
    for addr, data in ((base, bytes(rsdp)), (facs_addr, facs()), (dsdt_addr, d), (fadt_addr, f),
                       (madt_addr, m), (hpet_addr, h), (rsdt_addr, rsdt)):
        blob[addr - base:addr - base + len(data)] = data
    return base, bytes(blob), facs_addr
