"""pyvmm.kvmtrace's pure logic: tracefs format files, ring-buffer pages (built here as the
kernel lays them out, including hostile lengths), event specs against a fake events tree,
and the records' questions (count, between, stacks, exit-reason latencies)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from pyvmm.kvmtrace.format import FormatError, PageLayout, parse_format, parse_header_page
from pyvmm.kvmtrace.reader import MISSED_EVENTS, MISSED_STORED, iter_page
from pyvmm.kvmtrace.record import KernelSymbols, KvmEvent
from pyvmm.kvmtrace.session import KvmRecords, KvmTrace
from pyvmm.kvmtrace.stat import exit_reasons, summary
from pyvmm.kvmtrace.tracefs import KvmTraceError, resolve_events

PIO = """name: kvm_pio
ID: 110
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int rw;\toffset:8;\tsize:4;\tsigned:0;
\tfield:unsigned int port;\toffset:12;\tsize:4;\tsigned:0;
\tfield:unsigned int size;\toffset:16;\tsize:4;\tsigned:0;
\tfield:unsigned int count;\toffset:20;\tsize:4;\tsigned:0;
\tfield:unsigned int val;\toffset:24;\tsize:4;\tsigned:0;

print fmt: "pio_%s at 0x%x", REC->port, \
__print_symbolic(REC->rw, { 0, "KVM_" "READ" }, { 1, "WRITE" })
"""
EXIT = """name: kvm_exit
ID: 103
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;
\tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;
\tfield:__data_loc char[] name;\toffset:28;\tsize:4;\tsigned:0;

print fmt: "reason %s", (REC->isa == 1) ? \
__print_symbolic(REC->exit_reason & 0xffff, { 0, "EXCEPTION_NMI" }, { 30, "IO_INSTRUCTION" }) : \
__print_symbolic(REC->exit_reason, { 0x000, "read_cr0" }, { 0x040 + 14, "PF excp" }, { 0x07b, "io" })
"""
HEADER_PAGE = """\tfield: u64 timestamp;\toffset:0;\tsize:8;\tsigned:0;
\tfield: local_t commit;\toffset:8;\tsize:8;\tsigned:1;
\tfield: int overwrite;\toffset:8;\tsize:1;\tsigned:1;
\tfield: char data;\toffset:16;\tsize:4080;\tsigned:0;
"""
HEADER_EVENT = """# compressed entry header
\ttype_len    :    5 bits
\ttime_delta  :   27 bits
\tarray       :   32 bits

\tpadding     : type == 29
\ttime_extend : type == 30
\ttime_stamp : type == 31
\tdata max type_len  == 28
"""


def test_format_fields_and_symbols():
    f = parse_format(PIO, "kvm")
    assert (f.name, f.id, f.group) == ("kvm_pio", 110, "kvm")
    assert [x.name for x in f.fields] == ["rw", "port", "size", "count", "val"]
    rec = struct.pack("<HBBi5I", 110, 0, 0, 42, 1, 0x3F8, 1, 1, 0x41)
    assert f.decode(rec) == {"rw": 1, "port": 0x3F8, "size": 1, "count": 1, "val": 0x41}
    assert f.decode(rec[:14])["port"] is None  # a short record never reads past its end
    assert f.symbols["rw"] == [{0: "KVM_READ", 1: "WRITE"}]  # C's adjacent literals joined
    e = parse_format(EXIT, "kvm")
    assert e.symbols["exit_reason"][0][30] == "IO_INSTRUCTION"
    assert e.symbols["exit_reason"][1][0x4E] == "PF excp"
    rec = struct.pack("<HBBiI12xII", 103, 0, 0, 7, 0x7B, 2, (3 << 16) | 32) + b"ab\0"
    assert e.decode(rec)["name"] == "ab"


@pytest.mark.parametrize("text", ["", "name: x\n", "name: x\nID: 1\nformat:\n",
                                  "name: x\nID: 1\n\tfield:int a;\toffset:99999999;\tsize:4;\tsigned:1;"])
def test_malformed_formats(text):
    with pytest.raises(FormatError):
        parse_format(text)


def test_header_page():
    assert parse_header_page(HEADER_PAGE, HEADER_EVENT) == PageLayout()
    with pytest.raises(FormatError):
        parse_header_page("", HEADER_EVENT)


def ev(type_len: int, delta: int, payload: bytes = b"", array: int | None = None) -> bytes:
    head = struct.pack("<I", type_len | (delta << 5))
    return head + (struct.pack("<I", array) if array is not None else b"") + payload


def page(ts: int, body: bytes, flags: int = 0, size: int | None = None, tail: bytes = b"") -> bytes:
    n = len(body) if size is None else size
    return struct.pack("<QQ", ts, n | flags) + body + tail + bytes(4096 - 16 - len(body) - len(tail))


def test_page_events_deltas_and_extends():
    rec = struct.pack("<HBBi", 110, 0, 0, 5) + bytes(20)  # 28 bytes: type_len 7
    body = (ev(7, 10, rec) + ev(30, 3, array=1) + ev(7, 0, rec)
            + ev(29, 5, bytes(8), array=12)  # a discarded event (4 + array[0] bytes): its delta counts
            + ev(0, 2, rec + bytes(112), array=4 + 140)  # a long record: length word
            + ev(7, 1, rec))
    events, missed = iter_page(page(1000, body), PageLayout())
    assert missed == 0
    ts = [t for t, _ in events]
    assert ts == [1010, 1010 + (1 << 27) + 3, 1010 + (1 << 27) + 3 + 5 + 2,
                  1010 + (1 << 27) + 3 + 5 + 2 + 1]
    assert [len(r) for _, r in events] == [28, 28, 140, 28]


def test_page_lost_events_and_hostile_lengths():
    rec = struct.pack("<HBBi", 110, 0, 0, 5) + bytes(20)
    body = ev(7, 1, rec)
    events, missed = iter_page(page(0, body, MISSED_EVENTS | MISSED_STORED,
                                    tail=struct.pack("<Q", 17)), PageLayout())
    assert missed == 17 and len(events) == 1
    _, missed = iter_page(page(0, body, MISSED_EVENTS), PageLayout())
    assert missed == -1
    # a commit count beyond the page, a length word beyond the data, a cut page
    for bad in (page(0, body, size=1 << 20), page(0, ev(0, 1, rec, array=1 << 30)),
                page(0, ev(0, 1, rec, array=2)), page(0, body)[:40], b"", b"\xff" * 4096):
        events, _ = iter_page(bad, PageLayout())
        assert all(len(r) <= 4096 for _, r in events)


def tree(root: Path, events: dict[str, list[str]]) -> Path:
    for group, names in events.items():
        for n in names:
            (root / "events" / group / n).mkdir(parents=True)
    (root / "instances").mkdir()
    return root


def test_resolve_events(tmp_path):
    root = tree(tmp_path, {"kvm": ["kvm_pio", "kvm_exit", "kvm_entry"],
                           "kvmmmu": ["kvm_mmu_get_page"], "sched": ["sched_switch"]})
    assert resolve_events(root, ["kvm_pio", "kvm:kvm_pio"]) == [("kvm", "kvm_pio", "")]
    assert resolve_events(root, ["kvmmmu:*"]) == [("kvmmmu", "kvm_mmu_get_page", "")]
    assert [n for _, n, _ in resolve_events(root, ["kvm:kvm_e*"])] == ["kvm_entry", "kvm_exit"]
    assert resolve_events(root, ["kvm_pio if port == 0x3f8"]) == [("kvm", "kvm_pio", "port == 0x3f8")]
    with pytest.raises(KvmTraceError, match="did you mean kvm_exit"):
        resolve_events(root, ["kvm_exi"])
    with pytest.raises(KvmTraceError, match="not a KVM event"):
        resolve_events(root, ["sched:sched_switch"])
    with pytest.raises(KvmTraceError, match="not an event name"):
        resolve_events(root, ["kvm:../../x"])


def test_not_a_tracefs_is_one_error(tmp_path):
    with pytest.raises(KvmTraceError, match="not a tracefs"):
        KvmTrace(tracefs=tmp_path).start()


def rec(name: str, ts: int, pid: int = 1, group: str = "kvm", **fields: object) -> KvmEvent:
    return KvmEvent(name, group, 0, pid, ts, dict(fields), 0)


def test_records_count_between_stacks():
    r = KvmRecords([rec("kvm_pio", 1, port=0x3F8), rec("kvm_pio", 2, port=0x80),
                    KvmEvent("kvm_pio", "kvm", 0, 1, 3, {"port": 0x3F8}, 0, ("a+0x1", "b"))])
    assert r.count("kvm_pio") == 3 and r.count("kvm:kvm_pio", port=0x3F8) == 2
    assert r.count("kvmmmu:kvm_pio") == 0
    assert r.stacks("kvm_pio") == {("a+0x1", "b"): 1}
    assert r.names() == {"kvm:kvm_pio": 3}


class _Sync:
    def __init__(self, stage: int, t: int) -> None:
        self.kind, self.stage, self.time_ns = "sync", stage, t


def test_between_stages_and_summary():
    kt = KvmTrace(["kvm:kvm_pio"])
    kt._decoded = [rec("kvm_pio", 5), rec("kvm_mmu_get_page", 15, group="kvmmmu"),
                   rec("kvm_pio", 25), rec("kvm_pio", 35)]
    kt._guest = [_Sync(1, 10), _Sync(2, 30)]  # type: ignore[list-item]
    assert kt.between(1, 2).names() == {"kvmmmu:kvm_mmu_get_page": 1, "kvm:kvm_pio": 1}
    assert len(kt.between(None, 1)) == 1 and len(kt.between(2, None)) == 1
    with pytest.raises(KeyError, match="GUEST_SYNC 3"):
        kt.between(3, None)
    text = summary(kt)
    assert "before stage 1:" in text and "between stage 1 and stage 2:" in text
    assert "after stage 2:" in text
    kt._guest.append(_Sync(1, 40))  # type: ignore[arg-type]
    assert "between stage 2 and stage 1 (2nd):" in summary(kt)


def test_exit_reasons_pair_exit_and_entry():
    kt = KvmTrace(["kvm:kvm_exit"])
    fmt = parse_format(EXIT, "kvm")
    kt._formats = {fmt.id: fmt}
    kt._decoded = [rec("kvm_exit", 100, exit_reason=30, isa=1), rec("kvm_entry", 400),
                   rec("kvm_exit", 500, pid=2, exit_reason=0x7B, isa=2),
                   rec("kvm_exit", 600, exit_reason=30, isa=1), rec("kvm_entry", 700),
                   rec("kvm_entry", 1500, pid=2)]
    rows = {s.reason: s for s in exit_reasons(kt)}
    assert rows["IO_INSTRUCTION"].count == 2
    assert (rows["IO_INSTRUCTION"].min_ns, rows["IO_INSTRUCTION"].max_ns) == (100, 300)
    assert rows["io"].total_ns == 1000


def test_kernel_symbols():
    syms = KernelSymbols("ffffffff81000000 T _text\nffffffff81000100 t kvm_pio\t[kvm]\n"
                         "0000000000000000 t hidden\nzz t bad\nffffffff81000200 d data\n")
    assert syms.name(0xFFFFFFFF81000110) == "kvm_pio+0x10 [kvm]"
    assert syms.name(0xFFFFFFFF81000000) == "_text"
    assert syms.name(0x10) == "0x10"


def test_reader_unreadable_cpu_is_recorded_not_raised(tmp_path):
    from pyvmm.kvmtrace.reader import RawReader

    cpu = tmp_path / "per_cpu" / "cpu0"
    cpu.mkdir(parents=True)
    (cpu / "trace_pipe_raw").mkdir()  # read() on a directory: EISDIR
    r = RawReader(tmp_path)
    r.stop()
    r.close()
    assert list(r.failed) == [0] and r.pages == []
