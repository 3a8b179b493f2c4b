"""Cores under hostile page tables: each physical page of RAM is written once, whatever
the guest's tables alias, and the walk is bounded in entries and time."""

from __future__ import annotations

import struct
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pyvmm.debug.core import segments, write_core
from pyvmm.debug.coremap import WalkLimit, core_segments
from pyvmm.errors import GuestMemoryError
from pyvmm.kvm.native import ffi

P, RW, PS = 1, 2, 0x80
MIB = 1 << 20


class FakeMemory:
    """Guest RAM ``[0, size)`` as a bytearray, with Machine.memory's bounds checks."""

    def __init__(self, size: int) -> None:
        self.ram = bytearray(size)

    def ram_ranges(self) -> list[tuple[int, int]]:
        return [(0, len(self.ram))]

    def read(self, gpa: int, n: int) -> bytes:
        if gpa < 0 or n < 0 or gpa + n > len(self.ram):
            raise GuestMemoryError(f"{gpa:#x}+{n} is not RAM")
        return bytes(self.ram[gpa:gpa + n])

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.read(gpa, size), "little")

    def table(self, pa: int, entries: dict[int, int]) -> None:
        for i, e in entries.items():
            struct.pack_into("<Q", self.ram, pa + 8 * i, e)

    def read_table(self, pa: int) -> bytes | None:
        try:
            return self.read(pa, 4096)
        except GuestMemoryError:
            return None


def fake_machine(mem: FakeMemory, cr3: int) -> Any:
    sregs = ffi.new("struct kvm_sregs *")
    sregs.cr0, sregs.cr4, sregs.efer, sregs.cr3 = 0x80000011, 0x20, 0xD00, cr3
    regs = dict.fromkeys(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9",
                          "r10", "r11", "r12", "r13", "r14", "r15", "rip"), 0)
    regs["rflags"] = 2
    vcpu = SimpleNamespace(id=0, get_regs=lambda: dict(regs), get_sregs=lambda: sregs,
                           get_fpu=lambda: ffi.new("struct kvm_fpu *"))
    return SimpleNamespace(vcpus=[vcpu], memory=mem, image=None)


def aliased_gib_tables(ram: int) -> FakeMemory:
    """What the issue's guest did: 256 PML4 slots -> one PDPT whose 512 slots are all the
    1 GiB page at 0 (131,072 aliases of all of RAM, under the old walk's entry limit)."""
    mem = FakeMemory(ram)
    mem.table(0x1000, {i: 0x2000 | P | RW for i in range(256)})
    mem.table(0x2000, {i: 0 | P | RW | PS for i in range(512)})
    mem.ram[0x10000:0x10004] = b"data"
    return mem


def test_aliased_gib_pages_are_written_once() -> None:
    """Regression: the core walk placed every alias (65,280 segments of all of RAM: an
    apparent size in terabytes, still writing after 60 s)."""
    mem = aliased_gib_tables(4 * MIB)
    segs = segments(fake_machine(mem, 0x1000), fake_machine(mem, 0x1000).vcpus[0])
    assert segs == [(0, 0, 4 * MIB)]


def test_core_file_of_aliasing_tables_is_bounded_by_ram(tmp_path: Path) -> None:
    from elftools.elf.elffile import ELFFile

    mem = aliased_gib_tables(4 * MIB)
    core = tmp_path / "core"
    write_core(fake_machine(mem, 0x1000), core)
    assert core.stat().st_size <= 4 * MIB + 64 * 1024
    with core.open("rb") as f:
        loads = [s.header for s in ELFFile(f).iter_segments() if s.header.p_type == "PT_LOAD"]
    assert sum(h.p_filesz for h in loads) <= 4 * MIB
    assert {h.p_paddr for h in loads} == {0}
    assert core.read_bytes()[loads[0].p_offset + 0x10000:][:4] == b"data"


def test_many_distinct_tables_aliasing_2mib_pages_place_each_page_once() -> None:
    """Table de-duplication cannot help here (64 different page directories), the map of
    placed pages does: every 2 MiB leaf of every directory points into the same 8 MiB."""
    mem = FakeMemory(16 * MIB)
    mem.table(0x1000, {0: 0x2000 | P | RW, 511: 0x2000 | P | RW})
    mem.table(0x2000, {i: (0x100000 + 0x1000 * i) | P | RW for i in range(64)})
    for t in range(64):
        mem.table(0x100000 + 0x1000 * t, {i: ((i + t) % 4) << 21 | P | RW | PS for i in range(512)})
    segs = core_segments(mem.read_table, 0x1000, mem.ram_ranges())
    assert sum(size for _, _, size in segs) == 8 * MIB
    pages = [pa + off for _, pa, size in segs for off in range(0, size, 4096)]
    assert len(pages) == len(set(pages))  # each physical page once
    assert segs[0] == (0, 0, 8 * MIB)  # at the first virtual address that maps it


def test_self_referencing_tables_end_quickly() -> None:
    mem = FakeMemory(1 * MIB)
    mem.table(0x1000, {i: 0x1000 | P | RW for i in range(512)})
    assert core_segments(mem.read_table, 0x1000, mem.ram_ranges()) == [(0, 0x1000, 4096)]


def test_walk_gives_up_past_its_entries_or_its_time() -> None:
    mem = FakeMemory(64 * MIB)
    mem.table(0x1000, {i: (0x10000 + 0x1000 * i) | P | RW for i in range(512)})
    for t in range(512):  # 512 distinct PDPTs of 512 distinct directories' worth
        mem.table(0x10000 + 0x1000 * t, {i: (0x400000 + 0x1000 * i) | P | RW for i in range(512)})
    with pytest.raises(WalkLimit, match="entries"):
        core_segments(mem.read_table, 0x1000, mem.ram_ranges(), max_entries=10_000)
    now = [0.0]

    def clock() -> float:
        now[0] += 1.0
        return now[0]

    with pytest.raises(WalkLimit, match="took over"):
        core_segments(mem.read_table, 0x1000, mem.ram_ranges(), seconds=5, clock=clock)


def test_tables_outside_ram_and_leaves_past_it_are_skipped() -> None:
    mem = FakeMemory(2 * MIB)
    mem.table(0x1000, {0: 0x2000 | P, 1: (1 << 40) | P})  # the second table is not RAM
    mem.table(0x2000, {0: 0x3000 | P})
    mem.table(0x3000, {0: 0 | P | PS, 1: (1 << 30) | P | PS})  # the second page is not RAM
    assert core_segments(mem.read_table, 0x1000, mem.ram_ranges()) == [(0, 0, 2 * MIB)]


def test_a_core_that_cannot_be_written_is_an_output_error(tmp_path: Path) -> None:
    """From the API as from ``--core``: the user's file could not be written (119), not a
    bug in pyvmm (125, which CoreError was)."""
    from pyvmm.debug.core import CoreError
    from pyvmm.errors import ExitStatus

    mem = aliased_gib_tables(4 * MIB)
    with pytest.raises(CoreError, match="cannot write the core to") as e:
        write_core(fake_machine(mem, 0x1000), tmp_path / "no-such-dir" / "core")
    assert e.value.status == ExitStatus.OUTPUT
