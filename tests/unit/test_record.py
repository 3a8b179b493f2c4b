"""pyvmm.record's plain value classes behave as the dataclasses they replaced: ``==`` by
fields within one class, ``repr`` naming the fields, frozen ones hashable and read-only,
mutable ones unhashable; fields left out of ``==`` and ``repr`` where a class says so."""

from __future__ import annotations

import pytest

from pyvmm.devices.ucall import GuestEvent
from pyvmm.loader.elf import LoadSegment
from pyvmm.memory import MemoryRegion
from pyvmm.vstate.history import HistoryLimits
from pyvmm.vstate.result import Outcome, RunResult, RunStatus
from pyvmm.x86.entry import EntryState
from pyvmm.x86.segments import CODE64, Segment


def test_frozen_records_compare_hash_and_refuse_assignment() -> None:
    assert HistoryLimits() == HistoryLimits(1 << 20, 10_000)
    assert HistoryLimits(serial=0) != HistoryLimits()
    assert len({HistoryLimits(), HistoryLimits(), HistoryLimits(events=1)}) == 2
    assert Segment(0x08, 0xB, l=1, db=0) == CODE64
    with pytest.raises(AttributeError):
        CODE64.base = 1
    with pytest.raises(AttributeError):
        del CODE64.limit
    seg = LoadSegment(0, 0x1000, 0x1000, 16, b"x", 5)
    assert seg.end == 0x1010 and seg.executable
    assert repr(HistoryLimits(1, 2)) == "HistoryLimits(serial=1, events=2)"


def test_mutable_records_compare_by_fields_and_are_unhashable() -> None:
    a, b = Outcome(RunStatus.EXIT, 0, code=3), Outcome(RunStatus.EXIT, 0, code=3)
    assert a == b and a != Outcome(RunStatus.EXIT, 1, code=3)
    assert a.details == {} and a.details is not b.details  # a fresh default each
    with pytest.raises(TypeError):
        hash(a)
    r = RunResult(RunStatus.DONE, None)
    r.kvm_runs = 5
    assert r.events == [] and r.kvm_runs == 5 and r.ok
    assert repr(a).startswith("Outcome(kind=")
    assert a != ("exit", 0)  # another class is never equal


def test_fields_left_out_of_compare_and_repr() -> None:
    one = GuestEvent("sync", 0, (1,), time_ns=1)
    two = GuestEvent("sync", 0, (1,), time_ns=2)
    assert one == two and "time_ns" not in repr(one)
    region = MemoryRegion(0, 0, 4096)
    assert "mapping" not in repr(region) and region == MemoryRegion(0, 0, 4096)


def test_entry_state_defaults() -> None:
    e = EntryState("long", 0x100000)
    assert dict(e.regs) == {} and e.cr3 == 0
    assert e == EntryState("long", 0x100000)
