"""Pure logic that used to be tested only through a running guest: the test protocol's
decoder (untrusted guest input), CPU feature specs and each vCPU's CPUID, entry states,
the RAM size check and the HPET's registers.  Fakes stand in for guest memory, the vCPU
and KVM_IRQ_LINE; nothing here needs /dev/kvm."""

from __future__ import annotations

import struct
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from pyvmm.config import memory_size
from pyvmm.devices import hpet as H
from pyvmm.devices.base import HOST
from pyvmm.devices.ucall import _HEAD, BUF, MAX_ARGS, UCALL_SIZE, UcallDevice
from pyvmm.errors import ConfigError, GuestMemoryError
from pyvmm.kvm.vcpu import REGS
from pyvmm.x86 import layout
from pyvmm.x86.cpuid import BRAND_LEAVES, FEATURES, parse_cpu_features, vcpu_cpuid
from pyvmm.x86.entry import EntryState, apply_entry, mode_sregs
from pyvmm.x86.modes import CR0_PE, CR0_PG, LONG_MODE_EFER
from pyvmm.x86.segments import GDT_SIZE, SEL_DATA


# --- UcallDevice.decode --------------------------------------------------------------
class FakeMemory:
    """Guest RAM of ``size`` bytes at 0: reads outside it raise as GuestMemory's do."""

    def __init__(self, size: int = 0x10000) -> None:
        self.buf = bytearray(size)

    def read(self, gpa: int, n: int) -> bytes:
        if gpa < 0 or gpa + n > len(self.buf):
            raise GuestMemoryError(f"{gpa:#x}+{n} is not in RAM")
        return bytes(self.buf[gpa:gpa + n])

    def read_cstring(self, gpa: int, limit: int) -> bytes:
        if not 0 <= gpa < len(self.buf):
            raise GuestMemoryError(f"{gpa:#x} is not in RAM")
        return bytes(self.buf[gpa:gpa + limit]).split(b"\0", 1)[0]


def ucall(mem: FakeMemory, gpa: int, cmd: int, nargs: int, args: tuple[int, ...] = (),
          file: int = 0, line: int = 0, expr: int = 0, text: bytes = b"") -> None:
    a = (*args, *([0] * MAX_ARGS))[:MAX_ARGS]
    mem.buf[gpa:gpa + UCALL_SIZE] = _HEAD.pack(cmd, nargs, *a, file, line, expr) + \
        text.ljust(BUF, b"\0")[:BUF]


def device(mem: FakeMemory, symbols: Any = None) -> UcallDevice:
    return UcallDevice(mem, lambda: symbols, lambda ev: None)  # type: ignore[arg-type]


def test_ucall_decodes_each_command() -> None:
    mem = FakeMemory()
    mem.buf[0x2000:0x2008] = b"guest.c\0"
    mem.buf[0x2100:0x2106] = b"a == b"
    ucall(mem, 0x1000, 1, 3, (7, 0x10, 0x20))
    ev = device(mem).decode(0x1000, 1)
    assert (ev.kind, ev.vcpu, ev.args, ev.stage) == ("sync", 1, (7, 0x10, 0x20), 7)
    ucall(mem, 0x1000, 2, 2, (1, 2), file=0x2000, line=42, expr=0x2100)
    ev = device(mem).decode(0x1000, 0)
    assert (ev.kind, ev.file, ev.line, ev.expr, ev.args) == ("assert", "guest.c", 42, "a == b", (1, 2))
    ucall(mem, 0x1000, 3, 0, text=b"hello\0junk")
    assert device(mem).decode(0x1000, 0).text == "hello"
    ucall(mem, 0x1000, 5, 4, (14, 2, 0xdead, 0x401000))
    syms = SimpleNamespace(lookup=lambda rip: f"main+{rip - 0x401000:#x}")
    ev = device(mem, syms).decode(0x1000, 0)
    assert (ev.kind, ev.symbol) == ("exception", "main+0x0")
    assert "#PF" in ev.describe()


def test_ucall_refuses_hostile_structs_as_error_events() -> None:
    mem = FakeMemory()
    # the struct itself outside RAM (also: straddling its end)
    for gpa in (0x100000, len(mem.buf) - 8, (1 << 64) - 8):
        ev = device(mem).decode(gpa, 0)
        assert ev.kind == "error" and "not in RAM" in ev.text
    ucall(mem, 0x1000, 99, 0)
    assert device(mem).decode(0x1000, 0).text == "unknown ucall command 99"
    # nargs far beyond the array: only MAX_ARGS are taken
    ucall(mem, 0x1000, 1, 1 << 63, (1, 2, 3, 4, 5, 6))
    assert device(mem).decode(0x1000, 0).args == (1, 2, 3, 4, 5, 6)
    # string pointers outside RAM are named, never followed
    ucall(mem, 0x1000, 2, 0, file=1 << 40, expr=(1 << 64) - 1)
    ev = device(mem).decode(0x1000, 0)
    assert ev.file == f"<bad pointer {1 << 40:#x}>" and ev.expr.startswith("<bad pointer")
    assert ev.args == ()  # fewer than two values: no comparison shown
    # text that is not UTF-8 and fills the buffer without a NUL
    ucall(mem, 0x1000, 3, 0, text=b"\xff" * BUF)
    assert device(mem).decode(0x1000, 0).text == "\ufffd" * BUF


def test_ucall_ignores_writes_from_the_host() -> None:
    dev = device(FakeMemory())
    dev.write(0x1000, 4, 0, HOST)  # no RDI to read: nothing happens, nothing raised


# --- CPU features and CPUID ----------------------------------------------------------
def leaf(fn: int, index: int = 0, **regs: int) -> dict[str, int]:
    return {"function": fn, "index": index, "flags": 0, "eax": 0, "ebx": 0, "ecx": 0, "edx": 0,
            **regs}


def test_parse_cpu_features_syntax_and_refusals() -> None:
    assert parse_cpu_features("+x2apic,-pcid, avx=off,tsc_deadline,sse3=on") == {
        "x2apic": True, "pcid": False, "avx": False, "tsc-deadline": True, "sse3": True}
    assert parse_cpu_features("") == {}
    with pytest.raises(ConfigError, match="unknown CPU feature 'nosuch'"):
        parse_cpu_features("+nosuch")
    x2apic = FEATURES["x2apic"]
    table = [leaf(1, ecx=1 << x2apic[3])]
    assert parse_cpu_features("+x2apic,-avx", table) == {"x2apic": True, "avx": False}
    with pytest.raises(ConfigError, match=r"cannot add \+avx"):
        parse_cpu_features("+avx", table)


def test_vcpu_cpuid_sets_ids_features_and_brand() -> None:
    brand = [(0x61616161, 0x62626262, 0, 0), (0, 0, 0, 0), (0, 0, 0, 0)]
    table = [leaf(1, ebx=0xABCD, ecx=1 << FEATURES["pcid"][3]), leaf(0xB, 0), leaf(0xB, 1),
             *(leaf(fn) for fn in BRAND_LEAVES)]
    out = vcpu_cpuid(table, apic_id=3, ncpus=4, features={"pcid": False, "x2apic": True},
                     brand=brand)
    one = out[0]
    assert one["ebx"] == 0xABCD | (3 << 24) | (4 << 16)
    assert not one["ecx"] >> FEATURES["pcid"][3] & 1
    assert one["ecx"] >> FEATURES["x2apic"][3] & 1
    assert one["ecx"] >> 31 & 1  # hypervisor
    assert one["edx"] >> 28 & 1  # HTT with more than one vCPU
    assert [e["edx"] for e in out[1:3]] == [3, 3]  # x2APIC id in both 0xB subleaves
    assert (out[3]["eax"], out[3]["ebx"]) == (0x61616161, 0x62626262)
    assert table[0]["ebx"] == 0xABCD  # the supported table itself is not changed
    single = vcpu_cpuid([leaf(1)], apic_id=0, ncpus=1, brand=brand)[0]
    assert not single["edx"] >> 28 & 1


# --- entry states ----------------------------------------------------------------------
class FakeVcpu:
    """Records what apply_entry hands the vCPU: the mode's half of the sregs, and the
    registers (Vcpu.enter: one native call in the real one)."""

    def __init__(self) -> None:
        self.sregs: Any = None
        self.regs: dict[str, int] = {}
        self.rip = -1

    def enter(self, mode: Any, regs: Any) -> None:
        self.sregs = mode
        self.regs = {n: int(getattr(regs, n)) for n in REGS if n not in ("rip", "rflags")
                     and getattr(regs, n)}
        self.rip, self.rflags = int(regs.rip), int(regs.rflags)


def test_apply_entry_in_each_mode() -> None:
    v = FakeVcpu()
    apply_entry(v, EntryState.long_mode(0x401000, cr3=0x9000, gdt_base=0x500, rdi=7))  # type: ignore[arg-type]
    s = v.sregs
    assert v.rip == 0x401000 and v.regs == {"rdi": 7} and v.rflags == 0x2
    assert s.cr0 & CR0_PG and s.cr3 == 0x9000 and s.efer == LONG_MODE_EFER and s.cs.l == 1
    assert (s.gdt.base, s.gdt.limit, s.ds.selector, s.ss.db) == (0x500, GDT_SIZE - 1, SEL_DATA, 1)
    v = FakeVcpu()
    apply_entry(v, EntryState.protected_mode(0x100000, gdt_base=0x500, rax=0x2BADB002))  # type: ignore[arg-type]
    assert v.sregs.cr0 & CR0_PE and not v.sregs.cr0 & CR0_PG and v.sregs.efer == 0
    assert v.sregs.cs.db == 1 and v.regs == {"rax": 0x2BADB002}
    v = FakeVcpu()
    apply_entry(v, EntryState.real_mode(0x9F0A0))  # type: ignore[arg-type]
    assert (v.sregs.cs.selector, v.sregs.cs.base, v.rip) == (0x9F0A, 0x9F0A0, 0)
    assert not v.sregs.cr0 & CR0_PE
    assert EntryState.real_mode(0x9F0A0).describe() == "real mode at 9f0a:0000"


def test_the_mode_half_of_sregs_is_built_once_per_entry_state() -> None:
    """Machines are built by the thousand from one image: its entry's sregs are reused,
    and two different entries never share one."""
    a = mode_sregs(EntryState.long_mode(0x401000, cr3=0x9000, gdt_base=0x500))
    assert mode_sregs(EntryState.long_mode(0x402000, cr3=0x9000, gdt_base=0x500)) is a
    b = mode_sregs(EntryState.long_mode(0x401000, cr3=0xA000, gdt_base=0x500))
    assert b is not a and (a.cr3, b.cr3) == (0x9000, 0xA000)


def test_entry_states_refuse_what_cannot_be() -> None:
    for bad in (-1, 0x100000, 1 << 40):
        with pytest.raises(ConfigError, match="below 1 MiB"):
            EntryState.real_mode(bad)
    with pytest.raises(ConfigError, match="unknown entry mode"):
        apply_entry(FakeVcpu(), EntryState("virtual-8086", 0))  # type: ignore[arg-type]


# --- memory_size -------------------------------------------------------------------------
def test_memory_size_units_and_refusals(monkeypatch: pytest.MonkeyPatch) -> None:
    import pyvmm.config

    monkeypatch.setattr(layout, "host_memory", lambda: 8 << 30)
    monkeypatch.setattr(pyvmm.config, "_SIZES", {})  # sizes it accepted are remembered
    assert memory_size("64M") == memory_size(64 << 20) == memory_size("64") == 64 << 20
    assert memory_size("1G") == 1 << 30 and memory_size("4096K") == 4 << 20
    with pytest.raises(ConfigError, match="did you mean '64M'"):
        memory_size(64)
    for bad in (0, -4096, "0", "-1M"):
        with pytest.raises(ConfigError):
            memory_size(bad)
    with pytest.raises(ConfigError, match="more than this host's"):
        memory_size("16G")
    for wrong in (True, 1.5, None, b"64M"):
        with pytest.raises(ConfigError, match="must be an int"):
            memory_size(wrong)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        memory_size("lots")
    # only accepted strings are remembered, and a remembered one answers the same
    assert pyvmm.config._SIZES == {"64M": 64 << 20, "64": 64 << 20, "1G": 1 << 30,
                                   "4096K": 4 << 20}
    assert memory_size("1G") == 1 << 30
    with pytest.raises(ConfigError, match="more than this host's"):
        memory_size("16G")  # refused again, not remembered


# --- the HPET ---------------------------------------------------------------------------
class Lines:
    """KVM_IRQ_LINE calls, in order, and an event per raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int]] = []
        self.raised = threading.Event()

    def __call__(self, gsi: int, level: int) -> None:
        self.calls.append((gsi, level))
        if level:
            self.raised.set()


def reg(h: H.Hpet, off: int, size: int = 8) -> int:
    return h.read(off, size, HOST)  # the bus hands the device offsets


def put(h: H.Hpet, off: int, value: int, size: int = 8) -> None:
    h.write(off, size, value, HOST)


def test_hpet_capabilities_counter_and_partial_accesses() -> None:
    h = H.Hpet(Lines())
    try:
        assert reg(h, 0) == H.GCAP_ID and reg(h, 4, 4) == H.PERIOD_FS
        assert reg(h, 0, 1) == H.GCAP_ID & 0xFF
        put(h, H.MAIN_COUNTER, 0x1234)  # writable while halted
        assert reg(h, H.MAIN_COUNTER) == 0x1234
        put(h, H.GEN_CONF, H.ENABLE_CNF)
        time.sleep(0.002)
        running = reg(h, H.MAIN_COUNTER)
        assert running > 0x1234 + 100  # 100 MHz: >= 1 ms later
        put(h, H.MAIN_COUNTER, 0)  # ignored while running
        assert reg(h, H.MAIN_COUNTER) >= running
        put(h, H.GEN_CONF, 0)
        halted = reg(h, H.MAIN_COUNTER)
        time.sleep(0.002)
        assert reg(h, H.MAIN_COUNTER) == halted
        assert reg(h, 0x100 + 0x20 * H.NUM_TIMERS) == 0  # past the last timer
        put(h, 0x100 + 0x20 * H.NUM_TIMERS, -1 & (1 << 64) - 1)  # ignored
    finally:
        h.close()


def test_hpet_one_shot_edge_and_level_interrupts() -> None:
    lines = Lines()
    h = H.Hpet(lines)
    try:
        t1 = 0x120
        put(h, t1, H.TN_INT_ENB | (17 << H.TN_ROUTE_SHIFT))  # timer 1 -> IOAPIC pin 17, edge
        put(h, t1 + 8, 1000)  # 10 us after 0
        put(h, H.GEN_CONF, H.ENABLE_CNF)
        assert lines.raised.wait(2)
        time.sleep(0.01)
        assert lines.calls[:2] == [(17, 1), (17, 0)]
        assert reg(h, H.GINTR_STA) == 0  # edge: no status bit
        lines.calls.clear()
        lines.raised.clear()
        t0 = 0x100
        put(h, t0, H.TN_INT_ENB | H.TN_INT_TYPE_LEVEL | (2 << H.TN_ROUTE_SHIFT))
        # 1 ms ahead: a comparator the counter passed before the write landed (a loaded host)
        # would never fire
        put(h, t0 + 8, reg(h, H.MAIN_COUNTER) + 100_000)
        assert lines.raised.wait(2)
        assert lines.calls == [(0, 1)]  # pin 2 is GSI 0; held until the guest clears it
        assert reg(h, H.GINTR_STA) == 1
        put(h, H.GINTR_STA, 1)  # write 1 to clear
        assert reg(h, H.GINTR_STA) == 0 and lines.calls == [(0, 1), (0, 0)]
    finally:
        h.close()


def test_hpet_state_from_a_file_is_checked() -> None:
    h = H.Hpet(Lines())
    try:
        good = h.state()
        h.check_state(good)
        for bad in ({**good, "conf": "x"}, {**good, "timers": []}, {}):
            with pytest.raises((ValueError, KeyError, TypeError)):
                h.check_state(bad)
    finally:
        h.close()


def test_ucall_struct_layout_matches_the_guest_header() -> None:
    # guest/include/pyvmm/ucall.h: cmd, nargs, args[6], file, line, expr, buf[256]
    assert struct.calcsize("<QQ6QQQQ") + 256 == UCALL_SIZE
