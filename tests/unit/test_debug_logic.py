"""Pure logic of the debugger: DR7 encoding, the gdb protocol's answers to hostile packets
(over a fake debugger), the register layout, page-table enumeration for cores, the core's
notes and the trace's JSON."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace
from typing import Any

import pytest

from pyvmm.debug.core import fpregset, prpsinfo, prstatus
from pyvmm.debug.debugger import DebugError, Debugger
from pyvmm.debug.gdbstub import Detach, GdbProtocol, Kill, Resume, parse_address
from pyvmm.debug.registers import G_PACKET_SIZE, LAYOUT, target_xml
from pyvmm.errors import ConfigError
from pyvmm.vstate.trace import ExitRecord, ExitTrace


def fake_machine(ncpus: int = 2) -> Any:
    return SimpleNamespace(vcpus=[SimpleNamespace(id=i) for i in range(ncpus)], _closed=False)


def test_dr7_encodes_each_slot() -> None:
    d = Debugger(fake_machine(), emulate_watchpoints=False)
    d.add_breakpoint(0x1000, hardware=True)
    d.add_watchpoint(0x2000, 8, "write")
    d.add_watchpoint(0x3002, 2, "access")
    regs = d.debug_registers()
    assert regs[:3] == (0x1000, 0x2000, 0x3002)
    dr7 = regs[7]
    assert dr7 & 0b111111 == 0b010101  # L0, L1, L2
    assert (dr7 >> 16) & 0xF == 0b0000  # exec, 1 byte
    assert (dr7 >> 20) & 0xF == 0b1001  # write, 8 bytes
    assert (dr7 >> 24) & 0xF == 0b0111  # read/write, 2 bytes
    assert dr7 & (1 << 9)  # GE for data breakpoints
    assert d.debug_registers(skip=0x1000)[7] & 1 == 0  # stepping off the breakpoint


def test_slots_run_out_and_watchpoints_must_be_aligned() -> None:
    d = Debugger(fake_machine(), emulate_watchpoints=False)
    for a in range(4):
        d.add_breakpoint(0x1000 + a, hardware=True)
    with pytest.raises(DebugError, match="in use"):
        d.add_breakpoint(0x2000, hardware=True)
    assert d.remove_breakpoint(0x1001, hardware=True)
    assert not d.remove_breakpoint(0x1001, hardware=True)
    for length, addr in ((3, 0x100), (4, 0x102), (16, 0x100)):
        with pytest.raises(DebugError, match="aligned"):
            d.add_watchpoint(addr, length)


class FakeRegs:
    def __init__(self) -> None:
        self.written: list[tuple[int, bytes]] = []

    def encode_all(self) -> bytes:
        return bytes(G_PACKET_SIZE)

    def encode(self, n: int) -> bytes:
        return bytes(LAYOUT[n].size)

    def set(self, n: int, data: bytes) -> None:
        if not 0 <= n < len(LAYOUT) or len(data) != LAYOUT[n].size:
            raise ValueError("bad register")
        self.written.append((n, data))

    def set_all(self, data: bytes) -> None:
        pass


class FakeDebugger:
    software_breakpoints = False
    emulate_watchpoints = True

    def watchpoints_emulated(self) -> bool:
        return self.emulate_watchpoints

    def __init__(self) -> None:
        self.machine = fake_machine(2)
        self.regs = FakeRegs()
        self.memory = {0x1000 + i: i for i in range(16)}
        self.bps: set[int] = set()

    def registers(self, vcpu: int) -> FakeRegs:
        return self.regs

    def read_memory(self, addr: int, n: int, vcpu: int) -> bytes:
        if addr not in self.memory:
            raise DebugError("not mapped")
        return bytes(self.memory.get(addr + i, 0) for i in range(n))

    def write_memory(self, addr: int, data: bytes, vcpu: int) -> None:
        self.read_memory(addr, 1, vcpu)

    def add_breakpoint(self, addr: int, hardware: bool | None = None) -> None:
        self.bps.add(addr)

    def remove_breakpoint(self, addr: int, hardware: bool | None = None) -> bool:
        return addr in self.bps

    def add_watchpoint(self, addr: int, length: int, kind: str) -> None:
        pass

    def remove_watchpoint(self, addr: int, length: int, kind: str) -> bool:
        return True

    def set_regs(self, vcpu: int, **kw: int) -> None:
        pass


def proto() -> GdbProtocol:
    return GdbProtocol(FakeDebugger())  # type: ignore[arg-type]


def test_protocol_answers() -> None:
    p = proto()
    assert b"qXfer:features:read+" in p.handle(b"qSupported:swbreak+;hwbreak+")  # type: ignore[operator]
    assert p.handle(b"qfThreadInfo") == b"m1,2" and p.handle(b"qsThreadInfo") == b"l"
    assert p.handle(b"Hg2") == b"OK" and p.thread == 1 and p.handle(b"qC") == b"QC2"
    assert p.handle(b"m1000,4") == b"00010203"
    assert p.handle(b"g") == b"00" * G_PACKET_SIZE
    assert p.handle(b"Z1,1000,1") == b"OK"
    assert p.handle(b"Z3,1000,4") == b""  # rwatch cannot be emulated by comparing values
    assert p.handle(b"vCont?") == b"vCont;c;C;s;S"
    assert p.handle(b"vCont;s:1;c") == Resume(0)
    assert p.handle(b"vCont;c") == Resume(None)
    assert p.handle(b"s") == Resume(1)
    assert p.handle(b"D") == Detach() and p.handle(b"k") == Kill()
    assert p.handle(b"qRcmd,6869") == b""  # unsupported, said so


def test_target_description_is_xml_gdb_reads() -> None:
    import xml.etree.ElementTree as ET

    root = ET.fromstring(target_xml().split(b"\n", 2)[2])
    regs = [r.get("name") for r in root.iter("reg")]
    assert regs[:18] == ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", *[f"r{i}" for i in
                         range(8, 16)], "rip", "eflags"]
    assert {"cr3", "efer", "fs_base", "xmm15", "st7", "fop"} <= set(regs)
    assert sum(int(r.get("bitsize", 0)) for r in root.iter("reg")) == G_PACKET_SIZE * 8
    p = proto()
    first = p.handle(b"qXfer:features:read:target.xml:0,40")
    assert isinstance(first, bytes) and first.startswith(b"m")


@pytest.mark.parametrize("packet", [
    b"m", b"mzz,1", b"m1000", b"m2000,4", b"M1000,2:0", b"M1000,1:0011", b"X1000,3:ab",
    b"p", b"p999", b"P999=00", b"Pzz=00", b"P0=00", b"G0", b"Z", b"Z1,1000", b"Z1,zz,1",
    b"Z7,1000,1", b"Hg0x", b"Hz1", b"Hg99", b"T", b"T0", b"T3", b"vCont;t:1", b"vCont;r1,2",
    b"vCont;s:9", b"vCont;", b"qXfer:features:read:other.xml:0,1", b"qXfer:features:read:target.xml:1",
    b"qThreadExtraInfo,99", b"c zz", b"\x00\xff", b"q" + b"\xff" * 50,
])
def test_hostile_packets_get_an_error_or_empty_reply(packet: bytes) -> None:
    r = proto().handle(packet)
    assert isinstance(r, bytes) and (r == b"" or r.startswith(b"E")), (packet, r)


def test_seeded_fuzz_of_the_dispatcher() -> None:
    rnd = random.Random(99)
    heads = [b"m", b"M", b"X", b"g", b"G", b"p", b"P", b"Z", b"z", b"H", b"T", b"q", b"Q",
             b"vCont", b"c", b"s", b"?", b"qXfer:features:read:target.xml:"]
    p = proto()
    for _ in range(3000):
        tail = bytes(rnd.choice(b"0123456789abcdefxyz,;:=-") for _ in range(rnd.randrange(12)))
        r = p.handle(rnd.choice(heads) + tail)
        assert isinstance(r, bytes | Resume | Detach | Kill)


def test_gdb_address_parsing() -> None:
    assert parse_address("1234") == ("localhost", 1234)
    assert parse_address(":1234") == ("localhost", 1234)
    assert parse_address("0.0.0.0:1") == ("0.0.0.0", 1)
    assert parse_address("[::1]:5") == ("::1", 5)
    for bad in ("x", "host:", "1:70000", "1:-1"):
        with pytest.raises(ConfigError):
            parse_address(bad)


def test_core_note_layouts() -> None:
    regs = {n: i for i, n in enumerate(("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
                                        "rip", "rflags"))}
    seg = SimpleNamespace(selector=0x10, base=0)
    sregs = SimpleNamespace(cs=SimpleNamespace(selector=8, base=0), ss=seg, ds=seg, es=seg,
                            fs=SimpleNamespace(selector=0, base=0x1234), gs=seg)
    st = prstatus(1, regs, sregs, 11)
    assert len(st) == 336
    assert struct.unpack_from("<h", st, 12)[0] == 11 and struct.unpack_from("<i", st, 32)[0] == 2
    pr_reg = struct.unpack_from("<27Q", st, 112)
    assert pr_reg[16] == regs["rip"] and pr_reg[17] == 8 and pr_reg[21] == 0x1234
    assert len(prpsinfo("guests/build/x.elf")) == 136
    fpu = SimpleNamespace(fcw=0x37F, fsw=0, ftwx=0, last_opcode=0, last_ip=0, last_dp=0,
                          mxcsr=0x1F80, fpr=[[0] * 16] * 8, xmm=[[1] * 16] * 16)
    fx = fpregset(fpu)
    assert len(fx) == 512 and fx[:2] == b"\x7f\x03" and fx[160:176] == b"\x01" * 16


def test_trace_json_follows_the_trace_event_format() -> None:
    from pyvmm.devices.ucall import GuestEvent

    recs = [ExitRecord(0, 1000, 5000, 2, 0x100, 0x3F8, 1, True, 0x41, True),
            ExitRecord(0, 6000, 9000, 5, 0x200, 0, 0, False, 0, False),
            ExitRecord(1, 2000, 3000, None, 0, 0, 0, False, 0, False)]
    ev = GuestEvent("sync", 1, (1, 42), time_ns=2500)
    doc = ExitTrace(recs, [ev]).to_json("guest")
    events = doc["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"vCPU 0", "vCPU 1"}
    for e in events:
        assert e["ph"] in ("M", "X", "i") and e["pid"] == 1
        if e["ph"] == "X":
            assert isinstance(e["ts"], float) and e["dur"] >= 0 and e["tid"] in (1, 2)
    io = next(e for e in events if e["name"] == "IO out 0x3f8")
    assert io["ts"] == 4.0 and io["dur"] == 1.0 and io["args"]["data"] == "0x41"
    sync = next(e for e in events if e["ph"] == "i")
    assert sync["name"] == "GUEST_SYNC 1" and sync["tid"] == 2 and sync["ts"] == 1.5


def test_bulk_g_packet_equals_register_by_register() -> None:
    """RegisterFile.encode_all packs in bulk; it must agree with encode(i) for every i."""
    from pyvmm.debug.registers import RegisterFile
    from pyvmm.kvm.native import ffi

    rnd = random.Random(5)
    regs = {n: rnd.getrandbits(64) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp",
                                             "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
                                             "r14", "r15", "rip", "rflags")}
    sregs = ffi.new("struct kvm_sregs *")
    for i, n in enumerate(("cs", "ss", "ds", "es", "fs", "gs")):
        getattr(sregs, n).selector = 8 * i + 3
    sregs.fs.base, sregs.gs.base, sregs.cr0, sregs.cr3, sregs.efer = 1, 2, 0x80000011, 0x5000, 0xD00
    fpu = ffi.new("struct kvm_fpu *")
    fpu.fcw, fpu.fsw, fpu.ftwx, fpu.mxcsr, fpu.last_ip = 0x37F, 0x3800, 0x81, 0x1F80, 0x1234
    for i in range(8):
        fpu.fpr[i][0:16] = [rnd.randrange(256) for _ in range(16)]
    for i in range(16):
        fpu.xmm[i][0:16] = [rnd.randrange(256) for _ in range(16)]
    f = RegisterFile(SimpleNamespace(get_regs=lambda: regs, get_sregs=lambda: sregs,  # type: ignore[arg-type]
                                     get_fpu=lambda: fpu))
    assert f.encode_all() == b"".join(f.encode(i) for i in range(len(LAYOUT)))
    assert len(f.encode_all()) == G_PACKET_SIZE


class KvmVcpu:
    """A vCPU whose KVM_SET_SREGS refuses what kvm_pvm refuses (CR4.LA57) with EINVAL, as
    KVM does, and counts the ioctls; its state is real ``struct kvm_*`` data."""

    def __init__(self) -> None:
        from pyvmm.kvm.native import ffi

        self.id = 0
        self.regs = {n: 0 for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8",
                                    "r9", "r10", "r11", "r12", "r13", "r14", "r15")}
        self.regs.update(rip=0x401000, rflags=0x2)
        self.sregs = ffi.new("struct kvm_sregs *")
        self.sregs.cr0, self.sregs.cr4, self.sregs.efer = 0x80000011, 0x20, 0xD00
        self.sregs.cs.l = 1
        self.fpu = ffi.new("struct kvm_fpu *")
        self.set_calls: list[int] = []
        self.applied_cr4 = int(self.sregs.cr4)

    def get_regs(self) -> dict[str, int]:
        return dict(self.regs)

    def get_sregs(self) -> Any:
        from pyvmm.kvm.native import ffi

        return ffi.new("struct kvm_sregs *", self.sregs[0])

    def get_fpu(self) -> Any:
        return self.fpu

    def set_sregs(self, sregs: Any) -> None:
        import errno

        from pyvmm.kvm.errors import KvmError

        self.set_calls.append(int(sregs.cr4))
        if int(sregs.cr4) & (1 << 12):
            raise KvmError("KVM_SET_SREGS", errno.EINVAL)
        self.applied_cr4 = int(sregs.cr4)

    def set_regs(self, regs: Any) -> None:
        self.regs = dict(regs)

    def set_fpu(self, fpu: Any) -> None:
        pass

    def set_guest_debug(self, control: int, debugreg: Any = ()) -> None:
        for v in debugreg:
            assert 0 <= v < 1 << 64  # a cffi struct field: OverflowError otherwise


def real_debugger() -> tuple[Debugger, KvmVcpu]:
    vcpu = KvmVcpu()
    return Debugger(SimpleNamespace(vcpus=[vcpu], _closed=False), emulate_watchpoints=False), vcpu  # type: ignore[arg-type]


def p_packet(name: str, value: int) -> bytes:
    from pyvmm.debug.registers import BY_NAME

    return b"P%x=%s" % (BY_NAME[name], value.to_bytes(LAYOUT[BY_NAME[name]].size, "little").hex().encode())


def test_register_writes_kvm_refuses_get_an_error_and_keep_the_vcpu() -> None:
    """Regression: P of CR4.LA57 was acknowledged, kept for the resume, and the resume's
    KVM_SET_SREGS failed with EINVAL, ending pyvmm (121) under gdb's feet.  Now the write is
    tried at once: refused with E, the vCPU keeps its old CR4, the session goes on."""
    d, vcpu = real_debugger()
    p = GdbProtocol(d)
    assert p.handle(p_packet("cr4", 0x20 | (1 << 12))) == b"E16"
    assert vcpu.applied_cr4 == 0x20 and int(d.registers(0).sregs.cr4) == 0x20
    assert p.handle(p_packet("cr4", 0x20 | (1 << 7))) == b"OK"  # PGE: KVM takes it
    assert vcpu.applied_cr4 == 0xA0
    # reserved bits and impossible combinations are refused before KVM is asked
    calls = len(vcpu.set_calls)
    for name, value in (("cr4", 1 << 40), ("cr4", 0x20 | (1 << 13)), ("cr0", 1 << 32),
                        ("cr0", 0x80000010), ("efer", 0xD00 | (1 << 3)), ("cr8", 16),
                        ("fs_base", 1 << 60), ("eflags", 0x2 | (1 << 15)), ("eflags", 0x20002),
                        ("rip", 0x0000_8000_0000_0000), ("mxcsr", 1 << 16),
                        ("fctrl", 0x10000), ("fstat", 0x10000), ("ftag", 0x10000), ("fop", 0x800)):
        assert p.handle(p_packet(name, value)) == b"E16", (name, value)
    assert len(vcpu.set_calls) == calls
    assert p.handle(b"c") == Resume(None)  # the session goes on
    d.registers(0).commit()  # what the resume writes: KVM takes it
    assert vcpu.applied_cr4 == 0xA0


@pytest.mark.parametrize("packet", [
    b"c10000000000000000", b"cffffffffffffffffffff", b"c0000800000000000",
    b"Z1,10000000000000000,1", b"Z0,1ffffffffffffffff,1", b"Z2,10000000000000000,8",
    b"mffffffffffffffff,ffffffffffffffff", b"m10000000000000000,1", b"m0,10000000000000000",
    b"M10000000000000000,1:00", b"Mffffffffffffffff,2:0000",
])
def test_addresses_beyond_64_bits_are_refused(packet: bytes) -> None:
    """Regression: these ended pyvmm with 125 (OverflowError from a cffi struct field) at
    the reply or at the next continue; now each is an E reply and the session goes on."""
    d, vcpu = real_debugger()
    d.translate = lambda address, vcpu=0: None  # type: ignore[method-assign]  # nothing mapped
    p = GdbProtocol(d)
    r = p.handle(packet)
    assert isinstance(r, bytes) and r.startswith(b"E"), (packet, r)
    assert all(s is None for s in d.slots)
    d._program(None, {})  # what the next continue does first
    assert vcpu.regs["rip"] == 0x401000 and d.registers(0).regs["rip"] == 0x401000


def _raw_records(n: int, vcpu_t0: int = 0) -> bytes:
    from pyvmm.vstate.trace import RECORD

    return b"".join(RECORD.pack(vcpu_t0 + 10 * i, vcpu_t0 + 10 * i + 5, 0x1000 + i, 0x3F8, 0x41,
                                2, 1, 1, 0) for i in range(n))


def test_trace_keeps_the_newest_events_and_records_and_says_how_many_it_dropped(
        tmp_path: Any) -> None:
    """Regression: every guest event went into a list (1,000,000 GUEST_PRINTFs: 1.19 GB
    of RSS) and records piled up run after run; now both are bounded like the ring, and
    the JSON's otherData counts what was dropped."""
    import json

    from pyvmm.devices.ucall import GuestEvent

    t = ExitTrace(capacity=8, max_events=5)
    for i in range(12):
        t.add_event(GuestEvent("print", 0, (f"line {i}",), time_ns=1000 + i))
    for run in range(3):  # three runs of 6 records each: the newest 8 stay
        t.add(0, _raw_records(6, vcpu_t0=100 * run), dropped=1)
    assert [e.args[0] for e in t.events] == [f"line {i}" for i in range(7, 12)]
    assert t.dropped_events == 7
    assert len(t.records) == 8 and t.dropped == 3 + 10
    assert [r.t_enter for r in t.records][-1] == 200 + 50
    path = tmp_path / "t.json"
    t.write_json(path, "g")
    with path.open() as f:
        doc = json.load(f)
    assert doc["otherData"]["dropped_events"] == 7 and doc["otherData"]["dropped_records"] == 13
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "i") == 5
    assert sum(1 for e in doc["traceEvents"] if e.get("name") == "KVM_RUN") == 8
    assert doc == json.loads(json.dumps(t.to_json("g")))  # the same document, streamed


def test_trace_json_is_written_streaming(tmp_path: Any) -> None:
    """Writing a trace must not build the whole document in memory: the peak Python
    allocation while writing stays a small fraction of the file written."""
    import tracemalloc

    t = ExitTrace()
    t.add(0, _raw_records(12_000), 0)
    t.add(1, _raw_records(12_000, vcpu_t0=7), 0)
    path = tmp_path / "t.json"
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        t.write_json(path)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    size = path.stat().st_size
    assert size > 5 << 20
    assert peak < size // 8, (peak, size)
