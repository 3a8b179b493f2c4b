"""ELF64 loader: good images parse; each kind of malformed image is refused by name."""

import struct

import pytest

from pyvmm.errors import ConfigError, GuestImageError
from pyvmm.loader import open_image
from pyvmm.loader.boot import BOOT_INFO, BOOT_MAGIC, E820_RESERVED, MIN_STACK, parse_elf64, plan_boot
from pyvmm.loader.elf import LoadSegment

MiB = 1 << 20


@pytest.fixture(scope="module")
def hello(guests):
    return (guests / "hello.elf").read_bytes()


def patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    b = bytearray(data)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def phdr_offset(data: bytes, index: int) -> int:
    e_phoff = struct.unpack_from("<Q", data, 32)[0]
    e_phentsize = struct.unpack_from("<H", data, 54)[0]
    return e_phoff + index * e_phentsize


def test_good_image(hello):
    img = parse_elf64(hello, "hello")
    assert img.entry == img.symbols.address_of("_start")
    assert [s.paddr for s in img.segments] == sorted(s.paddr for s in img.segments)
    assert any(s.executable and s.vaddr <= img.entry < s.vaddr + s.memsz for s in img.segments)
    assert img.symbols.lookup(img.symbols.address_of("main") + 3) == "main+0x3"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: b"MZ" + d[2:], "not an ELF file"),
    (lambda d: patched(d, 4, "<B", 1), "ELFCLASS32"),
    (lambda d: patched(d, 18, "<H", 3), "EM_X86_64"),
    (lambda d: patched(d, 16, "<H", 3), "static executable"),
    (lambda d: patched(d, 24, "<Q", 0x5000000), "entry point"),
    (lambda d: d[:200], "truncated|malformed"),
    (lambda d: patched(d, phdr_offset(d, 1) + 32, "<Q", 1 << 40), "p_filesz > p_memsz|past the end"),
    (lambda d: patched(d, phdr_offset(d, 2) + 24, "<Q", 0x100000), "overlap"),
], ids=["magic", "class", "machine", "type", "entry", "truncated", "filesz", "overlap"])
def test_malformed_refused(hello, mutate, message):
    with pytest.raises(GuestImageError, match=message):
        parse_elf64(mutate(hello), "bad")


def test_missing_file(tmp_path):
    with pytest.raises(GuestImageError, match="no such file"):
        open_image(tmp_path / "nope.elf")
    with pytest.raises(GuestImageError, match="directory"):
        open_image(tmp_path)


def seg(paddr, size, idx=1):
    return LoadSegment(idx, paddr, paddr, size, b"\x90" * min(size, 16), 5)


def test_plan_places_structures_high_and_reports_them():
    ram = [(0, 64 * MiB)]
    plan = plan_boot(ram, [seg(0x100000, 0x4000)], b"hello world", 2)
    assert plan.stack_top == 64 * MiB and plan.stack_size >= MIN_STACK
    assert plan.vmm_base + plan.vmm_size == plan.stack_base
    info = dict(plan.writes)[plan.info_addr]
    fields = BOOT_INFO.unpack(info)
    assert fields[0] == BOOT_MAGIC and fields[5] == 2 and fields[7] == len(b"hello world")
    reserved = [e for e in plan.memory_map if e[2] == E820_RESERVED]
    assert reserved == [(plan.vmm_base, plan.vmm_size + plan.stack_size, E820_RESERVED)]
    assert dict(plan.writes)[plan.cmdline_addr] == b"hello world\0"


def test_plan_avoids_segments_at_the_top():
    ram = [(0, 8 * MiB)]
    plan = plan_boot(ram, [seg(0x100000, 0x1000), seg(7 * MiB, MiB, 2)], b"", 1)
    assert plan.stack_top <= 7 * MiB


def test_segment_outside_ram():
    with pytest.raises(GuestImageError, match=r"outside guest RAM.*--mem"):
        plan_boot([(0, 2 * MiB)], [seg(0x100000, 2 * MiB)], b"", 1)
    with pytest.raises(GuestImageError, match="outside guest RAM"):
        plan_boot([(0, 3 << 30), (4 << 30, MiB)], [seg(0xFEE00000, 0x1000)], b"", 1)


def test_no_room_for_structures():
    with pytest.raises(GuestImageError, match="no free RAM"):
        plan_boot([(0, MiB)], [seg(0x1000, MiB - 0x1000 - 0x4000)], b"", 1)


def test_cmdline_limit():
    with pytest.raises(ConfigError, match="command line too long"):
        plan_boot([(0, 64 * MiB)], [seg(0x100000, 0x1000)], b"x" * 5000, 1)


def _gcc(tmp_path, *flags: str, strip: tuple[str, ...] = ()) -> bytes:
    """hello world built the ordinary way, for Linux (skip where this host cannot)."""
    import shutil
    import subprocess

    if shutil.which("gcc") is None:
        pytest.skip("no gcc to build a Linux program with")
    src = tmp_path / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void) { puts("hello"); return 0; }\n')
    out = tmp_path / "hello"
    p = subprocess.run(["gcc", *flags, "-o", str(out), str(src)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"gcc {' '.join(flags)} cannot link here: {p.stderr.strip()[-200:]}")
    if strip:
        subprocess.run(["objcopy", *strip, str(out)], check=True)
    return out.read_bytes()


@pytest.mark.parametrize("flags, strip, why", [
    (["-static"], (), "GNU ABI note"),
    (["-static", "-s"], ("--remove-section=.note.ABI-tag",), "OS ABI is GNU/Linux|C library.s __libc_"),
    (["-static"], ("--remove-section=.note.ABI-tag", "--remove-section=.note.gnu.property"),
     "OS ABI is GNU/Linux|C library"),
    ([], (), "interpreter /lib"),
    (["-no-pie"], (), "interpreter /lib"),
    (["-static-pie"], (), "PT_DYNAMIC"),
], ids=["static", "static-stripped", "static-no-note", "dynamic", "dynamic-no-pie", "static-pie"])
def test_linux_programs_are_refused(tmp_path, flags, strip, why):
    """A `gcc -static` hello was accepted as a guest and spun silently for ever."""
    data = _gcc(tmp_path, *flags, strip=strip)
    with pytest.raises(GuestImageError, match=why) as e:
        parse_elf64(data, "hello")
    assert "Linux user-space program" in str(e.value) and "pyvmm guest build" in str(e.value)


def test_symbol_alone_marks_a_linux_program(tmp_path):
    """Neither note nor OS ABI (both cleared), only the C library's start-up symbol."""
    data = bytearray(_gcc(tmp_path, "-static", strip=("--remove-section=.note.ABI-tag",)))
    data[7] = 0  # EI_OSABI: System V
    with pytest.raises(GuestImageError, match="C library's __libc_start_main"):
        parse_elf64(bytes(data), "hello")


def test_kernel_notes_are_not_linux_abi(hello):
    """A guest (here with its Xen PVH note) is no Linux program."""
    from pyvmm.loader.elf import parse
    from pyvmm.loader.linux import linux_program

    assert linux_program(parse(hello, "hello")) is None


@pytest.mark.parametrize("name", ["hello.elf", "mbtest.flat"])
def test_a_big_image_read_in_parts_loads_as_read_whole(guests, tmp_path, name):
    """Only the parts the loaders use are read of a big ELF file (debug information is
    not): what they see of it must be what they see of the whole file."""
    import mmap

    from pyvmm.loader import parse_image
    from pyvmm.loader.sparse import read_image

    data = (guests / name).read_bytes()
    big = tmp_path / name
    big.write_bytes(data + b"\x55" * (3 << 20))
    parts = read_image(big, 64 << 20)
    assert isinstance(parts, mmap.mmap)  # not read whole
    a, b = parse_image(data, name), parse_image(parts, name)
    assert (a.entry, a.format) == (b.entry, b.format)
    assert [(s.paddr, s.memsz, bytes(s.data)) for s in a.segments] == \
        [(s.paddr, s.memsz, bytes(s.data)) for s in b.segments]
    assert a.symbols.entries == b.symbols.entries and a.symbols.entries
