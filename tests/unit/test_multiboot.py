"""Multiboot v1 parsing and placement, and the QEMU-compatible devices: pure logic."""

import struct

import pytest

from pyvmm.devices.base import HOST
from pyvmm.devices.bus import GuestStop
from pyvmm.devices.fw_cfg import FwCfg
from pyvmm.devices.legacy import AcpiPm, BochsShutdown, PciConfigMech1
from pyvmm.devices.rtc import Rtc
from pyvmm.errors import GuestImageError
from pyvmm.loader.multiboot import (
    HEADER_MAGIC,
    INFO_ADDR,
    Module,
    find_header,
    parse_multiboot,
    plan_multiboot,
)
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
    strings = writes[INFO_ADDR + 0x400]
    assert strings[cmd - INFO_ADDR - 0x400:].startswith(b"/k quiet\0")
    assert (0x100000, 127 * MiB, 1) in plan.memory_map


def test_kernel_over_the_info_area_is_refused():
    img = parse_multiboot(aout_kernel(load=0x8000), "k")
    with pytest.raises(GuestImageError, match="info area"):
        plan_multiboot([(0, 128 * MiB)], img, b"k", [])


def test_fw_cfg_items_stream_and_unknown_keys_read_zero():
    fw = FwCfg(128 * MiB, 2)
    fw.write(0x510, 2, 0, HOST)
    assert bytes(fw.read(0x511, 1, HOST) for _ in range(4)) == b"QEMU"
    fw.write(0x510, 2, 3, HOST)
    assert fw.read(0x511, 1, HOST) | fw.read(0x511, 1, HOST) << 8 | fw.read(0x511, 1, HOST) << 16 == 0
    assert fw.read(0x511, 1, HOST) == 0x08  # 128 MiB = 0x08000000, little-endian
    fw.write(0x510, 2, 0x4242, HOST)
    assert fw.read(0x511, 1, HOST) == 0


def test_acpi_tables_have_valid_checksums():
    base, blob = acpi.build(4)
    assert blob[:8] == b"RSD PTR " and sum(blob[:20]) % 256 == 0
    rsdt_addr = struct.unpack_from("<I", blob, 16)[0]
    rsdt = blob[rsdt_addr - base:]
    n = struct.unpack_from("<I", rsdt, 4)[0]
    assert rsdt[:4] == b"RSDT" and sum(rsdt[:n]) % 256 == 0
    sigs = []
    for (addr,) in struct.iter_unpack("<I", rsdt[36:n]):
        t = blob[addr - base:]
        length = struct.unpack_from("<I", t, 4)[0]
        assert sum(t[:length]) % 256 == 0
        sigs.append(t[:4])
        if t[:4] == b"FACP":
            assert struct.unpack_from("<I", t, 76)[0] == 0x608  # PM_TMR_BLK
        if t[:4] == b"APIC":
            assert t[44:46] == b"\x00\x08" and t.count(b"\x00\x08") >= 4
    assert sigs == [b"FACP", b"APIC"]


def test_rtc_cmos_and_shutdown_byte():
    rtc = Rtc(128 * MiB)
    rtc.write(0x70, 1, 0x0F, HOST)
    rtc.write(0x71, 1, 0x0A, HOST)
    rtc.write(0x70, 1, 0x8F, HOST)  # NMI-mask bit set: same register
    assert rtc.read(0x71, 1, HOST) == 0x0A
    rtc.write(0x70, 1, 0x00, HOST)
    sec = rtc.read(0x71, 1, HOST)
    assert sec >> 4 < 6 and sec & 0xF < 10  # BCD
    rtc.write(0x70, 1, 0x17, HOST)
    assert rtc.read(0x71, 1, HOST) == 0xFF  # KiB above 1 MiB, capped at 0xFFFF as BIOSes do
    rtc.write(0x70, 1, 0x34, HOST)
    lo = rtc.read(0x71, 1, HOST)
    rtc.write(0x70, 1, 0x35, HOST)
    assert lo | rtc.read(0x71, 1, HOST) << 8 == (112 * MiB) >> 16  # 64 KiB units above 16 MiB


def test_bochs_pci_and_pm_timer():
    b = BochsShutdown()
    for c in b"Shutdow":
        b.write(0x8900, 1, c, HOST)
    with pytest.raises(GuestStop):
        b.write(0x8900, 1, ord("n"), HOST)
    pci = PciConfigMech1()
    pci.write(0xCF8, 4, 0x80001234, HOST)
    assert pci.read(0xCF8, 4, HOST) == 0x80001234 and pci.read(0xCFC, 4, HOST) == 0xFFFFFFFF
    pm = AcpiPm()
    assert pm.read(0x608, 4, HOST) <= pm.read(0x608, 4, HOST)
