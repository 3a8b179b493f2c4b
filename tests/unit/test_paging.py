import pytest

from pyvmm.x86.paging import (
    PAGE_2M,
    PAGE_4K,
    PTE_NX,
    PTE_P,
    PTE_PS,
    PageTableBuilder,
    PagingError,
    walk,
)


def reader(b: PageTableBuilder):
    blob = b.to_bytes()

    def read_u64(gpa: int) -> int:
        off = gpa - b.base
        assert 0 <= off <= len(blob) - 8, f"walk left the table block at {gpa:#x}"
        return int.from_bytes(blob[off:off + 8], "little")

    return read_u64


def test_identity_2m_covers_4g():
    b = PageTableBuilder(0x10000, max_tables=8)
    b.identity_map(0, 4 << 30, page_size=PAGE_2M)
    assert b.size == 6 * PAGE_4K  # PML4 + PDPT + 4 PDs
    rd = reader(b)
    for va in (0, 0x1234, 0x200000 + 5, 0xFEE00300, (4 << 30) - 1):
        assert walk(rd, b.cr3, va) == va
    assert walk(rd, b.cr3, 4 << 30) is None


def test_4k_pages_and_high_mapping():
    b = PageTableBuilder(0x20000)
    high = 0xFFFF_8000_0000_0000  # a higher-half kernel's base
    b.map(high, 0x300000, 3 * PAGE_4K, page_size=PAGE_4K)
    rd = reader(b)
    assert walk(rd, b.cr3, high + 0x1ABC) == 0x301ABC
    assert walk(rd, b.cr3, high + 3 * PAGE_4K) is None


def test_leaf_flags():
    b = PageTableBuilder(0)
    b.map(0x400000, 0x400000, PAGE_2M, flags=PTE_P | PTE_NX)
    b.map(0x1000, 0x1000, PAGE_4K, page_size=PAGE_4K)
    blob = b.to_bytes()
    # PML4[0] -> PDPT (table 1) -> PD (table 2); PD[2] is the 2 MiB leaf
    pd_entry = int.from_bytes(blob[2 * 4096 + 2 * 8: 2 * 4096 + 3 * 8], "little")
    assert pd_entry & PTE_PS and pd_entry & PTE_NX and pd_entry & ~0xFFF & ((1 << 52) - 1) == 0x400000


@pytest.mark.parametrize("args", [
    (0x1000, 0x1000, PAGE_2M, PAGE_2M),  # misaligned va for 2M
    (0, 0, 4096, 1 << 30),  # 1 GiB pages are not offered
    (1 << 47, 0, 4096, 4096),  # beyond 48 bits
])
def test_refused(args):
    va, pa, size, ps = args
    with pytest.raises(PagingError):
        PageTableBuilder(0).map(va, pa, size, page_size=ps)


def test_double_map_and_full_block():
    b = PageTableBuilder(0, max_tables=3)
    b.map(0, 0, PAGE_2M)
    with pytest.raises(PagingError):
        b.map(0, 0, PAGE_2M)
    with pytest.raises(PagingError):
        b.map(1 << 30, 1 << 30, PAGE_2M)  # needs a 4th table


def test_unaligned_base():
    with pytest.raises(PagingError):
        PageTableBuilder(0x123)
