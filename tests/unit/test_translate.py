"""One translation for every paging mode (``x86.paging.translate``), decided by one
``x86.modes.paging_mode``, and the crash report reading the code at RIP through it.

Regression: the crash report walked 4-level tables whenever CR0.PG was set, so under
32-bit paging it read the wrong bytes (or none) at RIP; the debugger alone knew better."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pyvmm.crash import capture
from pyvmm.errors import GuestMemoryError
from pyvmm.x86.modes import (
    CR0_PE,
    CR0_PG,
    CR4_LA57,
    CR4_PAE,
    CR4_PSE,
    EFER_LMA,
    PAGING_4LEVEL,
    PAGING_5LEVEL,
    PAGING_32BIT,
    PAGING_32BIT_PSE,
    PAGING_NONE,
    PAGING_PAE,
    paging_mode,
)
from pyvmm.x86.paging import PAGE_4K, PageTableBuilder, translate

P, PS = 1, 0x80


class Ram:
    """Guest RAM at 0 with GuestMemory's bounds-checked reads."""

    def __init__(self, size: int = 1 << 20) -> None:
        self.buf = bytearray(size)
        self.end = size

    def put(self, gpa: int, value: int, size: int) -> None:
        self.buf[gpa:gpa + size] = value.to_bytes(size, "little")

    def read(self, gpa: int, n: int) -> bytes:
        if gpa < 0 or gpa + n > len(self.buf):
            raise GuestMemoryError(f"{gpa:#x} is not in RAM")
        return bytes(self.buf[gpa:gpa + n])

    def read_int(self, gpa: int, size: int) -> int:
        return int.from_bytes(self.read(gpa, size), "little")

    def region_at(self, gpa: int, n: int) -> SimpleNamespace:
        self.read(gpa, n)
        return SimpleNamespace(end=self.end)


def sregs(cr0: int = 0, cr4: int = 0, efer: int = 0, cr3: int = 0) -> SimpleNamespace:
    seg = SimpleNamespace(selector=0x8, base=0)
    return SimpleNamespace(cr0=cr0, cr2=0, cr3=cr3, cr4=cr4, efer=efer, cs=seg, ds=seg, ss=seg)


def test_paging_mode_names_each_mode() -> None:
    pg = CR0_PE | CR0_PG
    assert paging_mode(sregs()) == PAGING_NONE
    assert paging_mode(sregs(CR0_PE)) == PAGING_NONE
    assert paging_mode(sregs(pg)) == PAGING_32BIT
    assert paging_mode(sregs(pg, CR4_PSE)) == PAGING_32BIT_PSE
    assert paging_mode(sregs(pg, CR4_PAE | CR4_PSE)) == PAGING_PAE
    assert paging_mode(sregs(pg, CR4_PAE, EFER_LMA)) == PAGING_4LEVEL
    assert paging_mode(sregs(pg, CR4_PAE | CR4_LA57, EFER_LMA)) == PAGING_5LEVEL


def test_32_bit_paging_4k_and_4m_pages() -> None:
    ram = Ram()
    ram.put(0x1000 + 1 * 4, 0x2000 | P, 4)  # PDE[1] -> page table at 0x2000
    ram.put(0x2000 + 1 * 4, 0x5000 | P, 4)  # PTE[1] -> 0x5000
    ram.put(0x1000 + 2 * 4, 0x00C00000 | PS | P | (0x3 << 13), 4)  # PDE[2]: 4 MiB, PSE-36 bits
    assert translate(ram.read_int, PAGING_32BIT, 0x1000, 0x401123) == 0x5123
    assert translate(ram.read_int, PAGING_32BIT, 0x1000, 0x402000) is None  # PTE[2] absent
    assert translate(ram.read_int, PAGING_32BIT, 0x1000, 0xC00000) is None  # absent
    # PS counts only with CR4.PSE: without it PDE[2] points at a page table
    assert translate(ram.read_int, PAGING_32BIT_PSE, 0x1000, 0x812345) == (3 << 32) | 0xC12345
    assert translate(ram.read_int, PAGING_32BIT, 0x1000, 1 << 32) is None


def test_pae_paging_4k_and_2m_pages() -> None:
    ram = Ram()
    ram.put(0x1000, 0x3000 | P, 8)  # PDPTE[0] -> PD at 0x3000
    ram.put(0x3000 + 2 * 8, 0x4000 | P, 8)  # PDE[2] -> PT at 0x4000
    ram.put(0x4000 + 3 * 8, 0x7000 | P | (1 << 63), 8)  # PTE[3] -> 0x7000 (NX set)
    ram.put(0x3000 + 3 * 8, 0x00600000 | PS | P, 8)  # PDE[3]: 2 MiB at 6 MiB
    assert translate(ram.read_int, PAGING_PAE, 0x1000, 0x403ABC) == 0x7ABC
    assert translate(ram.read_int, PAGING_PAE, 0x1000, 0x612345) == 0x612345
    assert translate(ram.read_int, PAGING_PAE, 0x1000, 0x40000000) is None  # PDPTE[1] absent


def test_4_level_and_no_paging() -> None:
    b = PageTableBuilder(0x10000)
    high = 0xFFFF_8000_0000_0000
    b.map(high, 0x300000, PAGE_4K, page_size=PAGE_4K)
    ram = Ram()
    ram.buf[b.base:b.base + b.size] = b.to_bytes()
    assert translate(ram.read_int, PAGING_4LEVEL, b.cr3, high + 0x10) == 0x300010
    assert translate(ram.read_int, PAGING_4LEVEL, b.cr3, 0x1000) is None
    assert translate(ram.read_int, PAGING_NONE, 0, 0x1234) == 0x1234
    assert translate(ram.read_int, PAGING_NONE, 0, 1 << 32) is None
    assert translate(ram.read_int, PAGING_5LEVEL, b.cr3, 0) is None


def test_hostile_tables_are_read_through_bounded_reads() -> None:
    ram = Ram(0x3000)
    ram.put(0x1000, 0xFFFFF000 | P, 4)  # PDE -> a page table far outside RAM
    with pytest.raises(GuestMemoryError):
        translate(ram.read_int, PAGING_32BIT, 0x1000, 0x123)


class Vcpu:
    id = 0

    def __init__(self, rip: int, s: SimpleNamespace) -> None:
        self._rip, self._sregs = rip, s

    def get_regs(self) -> dict[str, int]:
        return {**{n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8",
                                  "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rflags")},
                "rip": self._rip}

    def get_sregs(self) -> SimpleNamespace:
        return self._sregs


def test_crash_report_reads_the_code_at_rip_under_32_bit_paging() -> None:
    ram = Ram()
    ram.put(0x1000 + 0 * 4, 0x6000 | P, 4)  # PDE[0] present too: a 4-level walk reads it
    ram.put(0x1000 + 1 * 4, 0x2000 | P, 4)
    ram.put(0x2000 + 1 * 4, 0x5000 | P, 4)
    code = bytes(range(0x90, 0xA0))
    ram.buf[0x5123:0x5133] = code
    s = sregs(CR0_PE | CR0_PG, cr3=0x1000)
    crash = capture(Vcpu(0x401123, s), ram, None, "test")  # type: ignore[arg-type]
    assert crash.insn == code


def test_crash_report_without_paging_adds_the_cs_base() -> None:
    ram = Ram()
    ram.buf[0x9F0A5:0x9F0A9] = b"\xf4\xeb\xfd\x90"
    s = sregs()
    s.cs = SimpleNamespace(selector=0x9F0A, base=0x9F0A0)
    crash = capture(Vcpu(0x5, s), ram, None, "test")  # type: ignore[arg-type]
    assert crash.insn[:4] == b"\xf4\xeb\xfd\x90"
