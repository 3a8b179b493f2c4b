"""``Machine.debug`` from Python (no gdb), ``--trace`` and ``RunResult.trace``, on the
real /dev/kvm with guests/debugme.c."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from pyvmm.debug import DebugError
from pyvmm.machine import Machine
from tests.cli import pyvmm


def sym(m: Machine, name: str) -> int:
    assert m.image is not None
    addr = m.image.symbols.address_of(name)
    assert addr is not None
    return addr


def test_breakpoint_step_registers_and_memory(guests: Path) -> None:
    with Machine.from_file(guests / "debugme.elf") as m:
        d = m.debug
        d.add_breakpoint(sym(m, "debug_checkpoint"))
        stop = d.cont(timeout=10)
        assert (stop.reason, stop.vcpu, stop.address) == ("breakpoint", 0, sym(m, "debug_checkpoint"))
        assert d.regs()["rip"] == sym(m, "debug_checkpoint") and d.regs()["rdi"] == 22
        rsp = d.regs()["rsp"]
        ret = int.from_bytes(d.read_memory(rsp, 8), "little")
        assert sym(m, "debug_compute") < ret < sym(m, "debug_store")
        step = d.step()
        assert step.reason == "step" and d.regs()["rip"] != sym(m, "debug_checkpoint")
        d.write_memory(sym(m, "watched"), (0x77).to_bytes(8, "little"))
        assert d.read_memory(sym(m, "watched"), 8) == (0x77).to_bytes(8, "little")
        with pytest.raises(DebugError, match="not mapped"):
            d.read_memory(0x7FF0_0000_0000, 8)
        d.remove_breakpoint(sym(m, "debug_checkpoint"))
        end = d.cont(timeout=10)
        assert end.ended and end.result.exit_code == 0
        assert b"watched 0x1234" in end.result.serial


def test_changing_rip_skips_code(guests: Path) -> None:
    """Write RIP at a breakpoint: debug_compute returns without calling the checkpoint."""
    with Machine.from_file(guests / "debugme.elf") as m:
        d = m.debug
        d.add_breakpoint(sym(m, "debug_checkpoint"))
        d.add_breakpoint(sym(m, "debug_store"))
        assert d.cont(timeout=10).address == sym(m, "debug_checkpoint")
        regs = d.regs()
        ret = int.from_bytes(d.read_memory(regs["rsp"], 8), "little")
        d.set_regs(rip=ret, rsp=regs["rsp"] + 8)  # as if it had returned at once
        assert d.cont(timeout=10).address == sym(m, "debug_store")
        assert d.step().reason == "step"


def test_write_watchpoint_fires_emulated_or_not(guests: Path) -> None:
    """A write watchpoint stops right after the store, by debug register or, where they
    never fire on data (pyvmm doctor: hw-watchpoint), by single-stepping."""
    from pyvmm.doctor import host_features

    hw = bool(host_features().features["hw-watchpoint"].works)
    with Machine.from_file(guests / "debugme.elf") as m:
        d = m.debug
        d.emulate_watchpoints = not hw
        d.add_breakpoint(sym(m, "debug_compute"))
        d.cont(timeout=10)
        d.remove_breakpoint(sym(m, "debug_compute"))
        d.add_watchpoint(sym(m, "watched"), 8, "write")
        stop = d.cont(timeout=30)
        assert (stop.reason, stop.address, stop.watch_kind) == ("watchpoint", sym(m, "watched"), "write")
        assert d.read_memory(sym(m, "watched"), 8) == (0x1234).to_bytes(8, "little")
        assert sym(m, "debug_store") < d.regs()["rip"] < sym(m, "debug_crash_inner")
        if not hw:
            with pytest.raises(DebugError, match="hw-watchpoint"):
                d.add_watchpoint(sym(m, "watched"), 8, "read")


@pytest.mark.requires("hw-watchpoint")
def test_read_watchpoint_with_debug_registers(guests: Path) -> None:
    with Machine.from_file(guests / "debugme.elf") as m:
        d = m.debug
        d.add_watchpoint(sym(m, "watched"), 8, "read")
        stop = d.cont(timeout=10)
        assert stop.reason == "watchpoint" and stop.address == sym(m, "watched")


@pytest.mark.requires("sw-breakpoint")
def test_software_breakpoint_patches_int3(guests: Path) -> None:
    with Machine.from_file(guests / "debugme.elf") as m:
        d = m.debug
        d.add_breakpoint(sym(m, "debug_checkpoint"), hardware=False)
        assert d.read_memory(sym(m, "debug_checkpoint"), 1) != b"\xcc"  # shows the original
        stop = d.cont(timeout=10)
        assert stop.reason == "breakpoint" and stop.software
        assert stop.address == sym(m, "debug_checkpoint")
        d.remove_breakpoint(sym(m, "debug_checkpoint"), hardware=False)
        assert d.cont(timeout=10).result.exit_code == 0


def test_pause_from_another_thread_and_resume(guests: Path) -> None:
    with Machine.from_file(guests / "debugme.elf", cmdline="spin", cpus=2) as m:
        d = m.debug
        threading.Timer(0.5, d.pause).start()
        t0 = time.monotonic()
        stop = d.cont(timeout=20)
        assert stop.reason == "paused" and time.monotonic() - t0 < 10
        rips = {v: d.regs(v)["rip"] for v in (0, 1)}
        assert sym(m, "debug_ap_loop") <= rips[1] < sym(m, "ap_main")
        d.write_memory(sym(m, "release"), (1).to_bytes(4, "little"))
        end = d.cont(timeout=20)
        assert end.ended and end.result.exit_code == 0 and b"released after" in end.result.serial


def test_a_crash_is_a_stop_with_state_then_the_end(guests: Path) -> None:
    with Machine.from_file(guests / "debugme.elf", cmdline="crash") as m:
        d = m.debug
        stop = d.cont(timeout=10)
        assert stop.reason == "crashed" and stop.signal == 11
        assert d.regs()["rip"] == sym(m, "debug_crash_inner")
        assert d.cont().ended


def test_no_breakpoints_means_guest_debug_stays_off(guests: Path) -> None:
    """An attached debugger with nothing set issues no KVM_SET_GUEST_DEBUG at all."""
    with Machine.from_file(guests / "debugme.elf") as m:
        calls: list[int] = []
        for v in m.vcpus:
            orig = v.set_guest_debug
            v.set_guest_debug = lambda c, r=(), orig=orig: (calls.append(c), orig(c, r))[1]  # type: ignore[method-assign]
        assert m.debug.cont(timeout=10).ended
        assert calls == []


def test_trace_records_every_exit(guests: Path, tmp_path: Path) -> None:
    with Machine.from_file(guests / "hostile.elf", cmdline="sync 3") as m:
        m.enable_trace()
        r = m.run(timeout=10)
    assert r.trace is not None and r.trace.dropped == 0
    recs = r.trace.records
    assert len(recs) == r.kvm_runs
    io = [x for x in recs if x.name.startswith("IO")]
    assert len(io) == r.exit_counts.get("IO", 0)
    ucalls = [x for x in io if x.name == "IO out 0x1000"]  # answered in Python
    assert len(ucalls) >= 3 and not any(x.fast for x in ucalls)
    assert all(x.rip for x in ucalls)
    assert all(a.t_enter <= a.t_exit for a in recs)
    assert [e.stage for e in r.trace.events if e.kind == "sync"] == [1, 1, 1]


def test_trace_ring_keeps_the_newest(guests: Path) -> None:
    with Machine.from_file(guests / "hostile.elf", cmdline="sync 50") as m:
        m.enable_trace(capacity=16)
        r = m.run(timeout=10)
    assert r.trace is not None
    assert len(r.trace.records) == 16 and r.trace.dropped == r.kvm_runs - 16


def test_cli_trace_writes_perfetto_json(guests: Path, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    r = pyvmm("run", "--trace", str(out), "--append", "sync 2", str(guests / "hostile.elf"))
    assert r.returncode == 0, r.stderr
    doc = json.loads(out.read_text())
    ev = doc["traceEvents"]
    assert {"ph": "M", "name": "thread_name", "pid": 1, "tid": 1, "args": {"name": "vCPU 0"}} in ev
    slices = [e for e in ev if e["ph"] == "X"]
    assert {e["cat"] for e in slices} == {"guest", "exit"}
    assert all(e["dur"] >= 0 for e in slices)
    assert [e["name"] for e in ev if e["ph"] == "i"][:2] == ["GUEST_SYNC 1", "GUEST_SYNC 1"]
    r = pyvmm("run", "--trace", str(out), "--python-loop", str(guests / "hello.elf"))
    assert r.returncode == 2 and "--python-loop" in r.stderr


def test_trace_of_a_message_flood_is_bounded(guests: Path, tmp_path: Path) -> None:
    """Regression: every guest event was kept for the trace (a guest printing 1,000,000
    messages under --trace peaked at 1.19 GB) and records piled up run after run.  With the
    bounds lowered, the trace keeps the newest events and records, its JSON (written
    streaming) parses, and otherData says how many of each were dropped (runs after the
    first: tests/unit/test_debug_logic.py)."""
    with Machine.from_file(guests / "hostile.elf", cmdline="printf 2000") as m:
        m.enable_trace(capacity=256, events=300)
        r = m.run(timeout=60)
    assert r.status == "exit" and r.exit_code == 0, r
    assert r.trace is not None
    trace = r.trace
    assert len(trace.events) == 300 and trace.dropped_events >= 2000 - 300
    assert "line 1999 of a long printf flood" in trace.events[-1].describe()
    assert len(trace.records) == 256 and trace.dropped == r.kvm_runs - 256
    out = tmp_path / "t.json"
    trace.write_json(out)
    with out.open() as f:
        doc = json.load(f)
    assert doc["otherData"]["dropped_events"] == trace.dropped_events
    assert doc["otherData"]["dropped_records"] == trace.dropped
    assert sum(1 for e in doc["traceEvents"] if e["ph"] == "i") == 300
    assert sum(1 for e in doc["traceEvents"] if e.get("name") == "KVM_RUN") == 256
