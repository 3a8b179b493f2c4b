"""What a new machine's set-up computes in Python for the C side: the run loop's
claimed-ports bitmap, its fast-table records, and whether KVM may need vm86's pages."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from pyvmm import hardware
from pyvmm._native import ffi
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, Space
from pyvmm.vstate.loop import entry_record, port_bitmap


def test_the_port_bitmap_has_exactly_the_claimed_ports() -> None:
    rng = random.Random(22)
    for _ in range(200):
        ranges = tuple((b, rng.randint(1, 64)) for b in rng.sample(range(0, 65536, 7), 4))
        ranges += ((65530, 6),)  # up to the last port
        bitmap = bytes(ffi.buffer(port_bitmap(ranges)))
        assert len(bitmap) == 8192
        want = {p for b, n in ranges for p in range(b, min(b + n, 65536))}
        got = {p for p in range(65536) if bitmap[p >> 3] >> (p & 7) & 1}
        assert got == want
    assert bytes(ffi.buffer(port_bitmap(()))) == bytes(8192)
    assert port_bitmap(((0x3F8, 8),)) is port_bitmap(((0x3F8, 8),))  # built once


def test_a_fast_entry_record_is_the_c_struct() -> None:
    owner = SimpleNamespace(name="dev")
    fe = FastEntry(Space.MMIO, 0xFED000F0, 8, READ | WRITE, Action.CLOCK, owner,  # type: ignore[arg-type]
                   read_value=123456789, enabled=False, clock_hz=3579545, clock_mask=(1 << 32) - 1)
    c = ffi.new("struct pyvmm_fast_entry *")
    c.hits, c.last_value = 5, 6  # a record starts its counts at 0
    ffi.memmove(c, entry_record(fe), ffi.sizeof(c[0]))
    got = {k: int(getattr(c, k)) for k in ("base", "len", "read_value", "last_value", "hits", "space",
                                            "dirs", "action", "enabled", "clock_hz", "clock_mask")}
    assert got == {"base": 0xFED000F0, "len": 8, "read_value": 123456789, "last_value": 0,
                   "hits": 0, "space": int(Space.MMIO), "dirs": READ | WRITE,
                   "action": int(Action.CLOCK), "enabled": 0, "clock_hz": 3579545,
                   "clock_mask": (1 << 32) - 1}
    with pytest.raises(OverflowError, match="dev at 0x0"):
        entry_record(FastEntry(Space.PIO, 0, 1, READ, Action.SINK, owner, read_value=1 << 64))  # type: ignore[arg-type]


@pytest.mark.parametrize(("param", "dirs", "want"), [
    ("Y\n", ("kvm", "kvm_intel"), False),  # unrestricted guest: no vm86
    ("N\n", ("kvm", "kvm_intel"), True),
    (None, ("kvm", "kvm_amd"), False),      # no kvm_intel (AMD, kvm_pvm)
    (None, ("kvm", "kvm_intel"), True),     # kvm_intel that does not say
    (None, (), True),                       # a /sys that does not tell: assume it may
])
def test_vm86_pages_only_where_kvm_may_use_vm86(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                param: str | None, dirs: tuple[str, ...],
                                                want: bool) -> None:
    sysmod = tmp_path / "module"
    for d in dirs:
        (sysmod / d / "parameters").mkdir(parents=True)
    if param is not None:
        (sysmod / "kvm_intel" / "parameters" / "unrestricted_guest").write_text(param)
    monkeypatch.setattr(hardware, "_SYS_MODULE", str(sysmod))
    monkeypatch.setattr(hardware, "_VM86", [])
    assert hardware.vm86_possible() is want


class _NoMemoryLib:
    """pyvmm_ram_map as it answers when the host has no memory for the memfd (or for the
    mapping): the rest of the binding as it is."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pyvmm_ram_map(self, size: int, advise: int, fd: object, err: object) -> object:
        fd[0], err[0] = self.fd, 12  # type: ignore[index]  # ENOMEM
        return ffi.NULL

    def __getattr__(self, name: str) -> object:
        from pyvmm._native import lib
        return getattr(lib, name)


@pytest.mark.parametrize(("fd", "what"), [(-2, "memfd guest RAM"), (-1, "mmap guest RAM")])
def test_out_of_memory_for_guest_ram_names_the_call_that_failed(
        monkeypatch: pytest.MonkeyPatch, fd: int, what: str) -> None:
    from pyvmm.kvm import hostmem
    from pyvmm.kvm.errors import KvmError

    monkeypatch.setattr(hostmem, "lib", _NoMemoryLib(fd))
    with pytest.raises(KvmError) as e:
        hostmem.HostMapping(64 << 20)
    assert e.value.ioctl == what and e.value.errno == 12 and "64 MiB" in str(e.value)


@pytest.mark.parametrize(("top", "sizes", "want"), [
    ("always within_size advise [never] deny force\n", {}, False),
    ("always within_size advise never [deny] force\n", {}, False),
    ("always within_size [advise] never deny force\n", {}, True),
    ("[always] within_size advise never deny force\n", {}, True),
    # Linux 6.11+: each size's own policy, unless it inherits the top one
    ("always within_size advise [never] deny force\n", {"2048kB": "[inherit] never advise"}, False),
    ("always within_size advise [never] deny force\n", {"2048kB": "inherit never [advise]"}, True),
    ("always within_size [advise] never deny force\n", {"2048kB": "[inherit] never advise"}, True),
    ("always within_size [advise] never deny force\n",
     {"2048kB": "inherit [never] advise", "64kB": "inherit [never] advise"}, False),
    (None, {}, False),  # no THP in this kernel
])
def test_guest_ram_is_advised_huge_pages_only_where_shmem_thp_heeds_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, top: str | None, sizes: dict[str, str],
        want: bool) -> None:
    from pyvmm.kvm import hostmem

    thp = tmp_path / "transparent_hugepage"
    thp.mkdir()
    if top is not None:
        (thp / "shmem_enabled").write_text(top)
    for size, text in sizes.items():
        (thp / f"hugepages-{size}").mkdir()
        (thp / f"hugepages-{size}" / "shmem_enabled").write_text(text + "\n")
    monkeypatch.setattr(hostmem, "_THP", str(thp))
    monkeypatch.setattr(hostmem, "_SHMEM_THP", [])
    assert hostmem.shmem_thp() is want


def test_a_reset_struct_s_cpuid_lives_as_long_as_what_reset_state_returned() -> None:
    """Regression: without a kvm_path (nothing cached), the CPUID struct was a local the
    returned struct only pointed at (cffi keeps no reference for a pointer field): freed on
    return, and KVM_SET_CPUID2 could read garbage.  What reset_state returns holds it."""
    from pyvmm.x86.reset import reset_state

    leaves = [{"function": f, "index": 0, "flags": 0, "eax": 0x10, "ebx": 0, "ecx": 0, "edx": 0}
              for f in (0, 1, 0xB, 0x80000000)]
    for lapic in (False, True):
        reset, keep = reset_state(0, lambda: leaves, 1, lapic=lapic)
        owners = {int(ffi.cast("uintptr_t", c)) for c in keep if isinstance(c, ffi.CData)}
        assert int(ffi.cast("uintptr_t", reset.cpuid)) in owners
        assert (int(ffi.cast("uintptr_t", reset.lapic)) in owners) is lapic
