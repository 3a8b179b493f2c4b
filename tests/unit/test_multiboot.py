"""Multiboot v1 parsing and placement, and the QEMU-compatible devices: pure logic."""

import struct

import pytest

from pyvmm.devices.acpi_pm import AcpiPm
from pyvmm.devices.base import HOST
from pyvmm.devices.bochs_shutdown import BochsShutdown
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.pci_config import PciConfigMech1
from pyvmm.devices.rtc import Rtc
from pyvmm.errors import GuestImageError
from pyvmm.loader.mbheader import HEADER_MAGIC, find_header
from pyvmm.loader.multiboot import INFO_ADDR, Module, parse_multiboot, plan_multiboot
from pyvmm.platform import acpi

MiB = 1 << 20


def header(flags, *addrs):
    return struct.pack("<III", HEADER_MAGIC, flags, (-(HEADER_MAGIC + flags)) & 0xFFFFFFFF) + \
        struct.pack(f"<{len(addrs)}I", *addrs)


def aout_kernel(load=0x100000, code=b"\xf4" * 64, bss=0x1000):
    """A flag-16 ('a.out kludge') kernel: the header says where everything goes."""
    hdr_off = 16
    end = load + hdr_off + 32 + len(code)
    return bytes(hdr_off) + header(1 << 16, load + hdr_off, load, end, end + bss,
                                   load + hdr_off + 32) + code


def test_header_search_alignment_and_checksum():
    assert find_header(bytes(8) + header(0)).offset == 8
    assert find_header(bytes(6) + header(0)) is None  # not 4-byte aligned
    bad = bytearray(header(0))
    bad[8] ^= 1
    assert find_header(bytes(bad)) is None
    assert find_header(bytes(8192) + header(0)) is None  # past the first 8 KiB


def test_aout_kludge_kernel_uses_the_header_addresses():
    img = parse_multiboot(aout_kernel(), "k")
    (seg,) = img.segments
    assert seg.paddr == 0x100000 and seg.memsz == len(aout_kernel()) + 0x1000
    assert img.entry == 0x100000 + 16 + 32


@pytest.mark.parametrize("data, msg", [
    (b"\x7fELF" + bytes(60), "no multiboot header"),
    (header(1 << 10), "requires features"),
    (header(0), "needs an ELF"),
])
def test_refused(data, msg):
    with pytest.raises(GuestImageError, match=msg):
        parse_multiboot(data, "k")


def test_info_block_modules_and_memory_map():
    img = parse_multiboot(aout_kernel(), "/k")
    plan = plan_multiboot([(0, 128 * MiB)], img, b"/k quiet", [Module(b"A=1\n", "env")])
    writes = dict(plan.writes)
    info = writes[INFO_ADDR]
    flags, lower, upper, _dev, cmd, nmods, mods = struct.unpack_from("<7I", info)
    assert flags & 0b1001101 == 0b1001101 and lower == 639 and upper == 127 * 1024
    (start, end), = plan.modules
    assert start % 4096 == 0 and start >= img.end and end - start == 4
    assert writes[start] == b"A=1\n" and nmods == 1
    assert struct.unpack_from("<II", writes[mods]) == (start, end)  # the kernel's module table
    assert mods > end  # the module list and the strings follow the module, as QEMU's
    strings_at = mods + 16
    assert writes[strings_at][cmd - strings_at:].startswith(b"/k quiet\0")
    assert (0x100000, 127 * MiB, 1) in plan.memory_map


def test_kernel_over_the_info_area_is_loaded_as_qemu_does():
    """A kernel linked at 0x8000 covers 0x9000-0xFFFF, where the info block goes: loaded all
    the same, its own bytes written after the info block (QEMU's -kernel does the same)."""
    img = parse_multiboot(aout_kernel(load=0x8000, code=b"\xf4" * 0x2000), "k")
    plan = plan_multiboot([(0, 128 * MiB)], img, b"k", [])
    order = [addr for addr, _ in plan.writes]
    assert plan.info_addr == INFO_ADDR and order.index(INFO_ADDR) < order.index(0x8000)


def test_fw_cfg_items_stream_and_unknown_keys_read_zero():
    fw = FwCfg(128 * MiB, 2)
    fw.write(0, 2, 0, HOST)
    assert bytes(fw.read(1, 1, HOST) for _ in range(4)) == b"QEMU"
    fw.write(0, 2, 3, HOST)
    assert fw.read(1, 1, HOST) | fw.read(1, 1, HOST) << 8 | fw.read(1, 1, HOST) << 16 == 0
    assert fw.read(1, 1, HOST) == 0x08  # 128 MiB = 0x08000000, little-endian
    fw.write(0, 2, 0x4242, HOST)
    assert fw.read(1, 1, HOST) == 0


def test_acpi_tables_have_valid_checksums():
    base, blob, facs_addr = acpi.build(4, 0x8086A201)
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) % 256 == 0
    rsdt_addr = struct.unpack_from("<I", blob, 16)[0]
    rsdt = blob[rsdt_addr - base:]
    n = struct.unpack_from("<I", rsdt, 4)[0]
    assert rsdt[:4] == b"RSDT" and sum(rsdt[:n]) % 256 == 0
    tables = {}
    for (addr,) in struct.iter_unpack("<I", rsdt[36:n]):
        t = blob[addr - base:]
        length = struct.unpack_from("<I", t, 4)[0]
        assert sum(t[:length]) % 256 == 0
        tables[t[:4]] = t[:length]
    assert list(tables) == [b"FACP", b"APIC", b"HPET"]
    fadt = tables[b"FACP"]
    assert struct.unpack_from("<I", fadt, 76)[0] == 0x608  # PM_TMR_BLK
    assert struct.unpack_from("<I", fadt, 64)[0] == 0x604  # PM1a_CNT_BLK
    assert struct.unpack_from("<I", fadt, 36)[0] == facs_addr and facs_addr % 64 == 0
    facs = blob[facs_addr - base:facs_addr - base + 64]
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    dsdt = blob[struct.unpack_from("<I", fadt, 40)[0] - base:]
    dsdt = dsdt[:struct.unpack_from("<I", dsdt, 4)[0]]
    assert sum(dsdt) % 256 == 0
    # Name(_S5_, Package(4) {0, 0, 0, 0}) and Name(_S3_, Package(4) {1, 1, 0, 0}) in AML
    assert b"\x08_S5_\x12\x06\x04\x00\x00\x00\x00" in dsdt
    assert b"\x08_S3_\x12\x06\x04\x01\x01\x00\x00" in dsdt
    madt = tables[b"APIC"]
    assert struct.unpack_from("<I", madt, 40)[0] & 1  # PCAT_COMPAT: a legacy PIC is present
    overrides = [struct.unpack_from("<BBBBIH", madt, i) for i in range(44, len(madt))
                 if madt[i:i + 2] == b"\x02\x0a"]
    assert (2, 10, 0, 0, 2, 0) in overrides  # IRQ 0 (the PIT) on GSI 2
    assert (2, 10, 0, 9, 9, 0xD) in overrides  # the SCI, level-triggered, active high
    hpet = tables[b"HPET"]
    assert struct.unpack_from("<IBBBBQ", hpet, 36) == (0x8086A201, 0, 64, 0, 0, 0xFED00000)


def test_rtc_cmos_and_shutdown_byte():
    rtc = Rtc(128 * MiB)
    rtc.write(0, 1, 0x0F, HOST)
    rtc.write(1, 1, 0x0A, HOST)
    rtc.write(0, 1, 0x8F, HOST)  # NMI-mask bit set: same register
    assert rtc.read(1, 1, HOST) == 0x0A
    rtc.write(0, 1, 0x00, HOST)
    sec = rtc.read(1, 1, HOST)
    assert sec >> 4 < 6 and sec & 0xF < 10  # BCD
    rtc.write(0, 1, 0x17, HOST)
    assert rtc.read(1, 1, HOST) == 0xFF  # KiB above 1 MiB, capped at 0xFFFF as BIOSes do
    rtc.write(0, 1, 0x34, HOST)
    lo = rtc.read(1, 1, HOST)
    rtc.write(0, 1, 0x35, HOST)
    assert lo | rtc.read(1, 1, HOST) << 8 == (112 * MiB) >> 16  # 64 KiB units above 16 MiB


def test_bochs_pci_and_pm_timer():
    b = BochsShutdown()
    for c in b"Shutdow":
        b.write(0, 1, c, HOST)
    with pytest.raises(GuestStop):
        b.write(0, 1, ord("n"), HOST)
    pci = PciConfigMech1()
    pci.write(0, 4, 0x80001234, HOST)
    assert pci.read(0, 4, HOST) == 0x80001234 and pci.read(4, 4, HOST) == 0xFFFFFFFF
    pm = AcpiPm()
    assert pm.read(8, 4, HOST) <= pm.read(8, 4, HOST)
