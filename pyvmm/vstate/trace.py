"""Exit traces (``pyvmm run --trace``, ``Machine.enable_trace``): what the C run loop
recorded per exit, plus the guest's events, as Chrome/Perfetto trace-event JSON.

The C loop writes one 48-byte ``struct pyvmm_trace_rec`` per KVM_RUN into a ring per vCPU
(two CLOCK_MONOTONIC reads and a few stores: the cost is in bench/run.py); Python copies
the ring out after each run.  A ring keeps the newest ``capacity`` records; older ones are
counted in :attr:`ExitTrace.dropped`.

In the JSON (the trace-event format that ui.perfetto.dev and chrome://tracing open), each
vCPU is a thread track: ``KVM_RUN`` slices for time in the guest, one slice per exit for
the time pyvmm took to answer it (named by reason and port/address; its args hold RIP,
size, data and whether the fast table answered), and instant events for GUEST_SYNC,
GUEST_PRINTF and the other guest messages.  The trace keeps the newest records of each
vCPU and the newest guest events, both bounded; ``otherData`` says how many of each were
dropped.  The JSON is written one event at a time.
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from pyvmm.kvm.native import ffi, lib
from pyvmm.kvm.run import exit_name

if TYPE_CHECKING:
    from pyvmm.devices.ucall import GuestEvent

#: struct pyvmm_trace_rec: t_enter, t_exit, rip, addr, data, reason, size, is_write, flags
RECORD = struct.Struct("<QQQQQIHBB")
EINTR = int(lib.PYVMM_TRACE_EINTR)
FAST = int(lib.PYVMM_TRACE_FAST)
DEFAULT_CAPACITY = 1 << 16
#: guest events a trace keeps (the newest; older ones are counted)
DEFAULT_EVENTS = 1 << 16
assert RECORD.size == ffi.sizeof("struct pyvmm_trace_rec")


class TimelineSource(Protocol):
    """More events for the same timeline (KVM's own: ``pyvmm.kvmtrace.timeline``), on the
    same clock (CLOCK_MONOTONIC ns)."""

    def first_ns(self) -> int | None: ...

    def metadata(self) -> dict[str, int]: ...

    def trace_events(self, us: Callable[[int], float]) -> Iterator[dict[str, Any]]: ...


@dataclass(frozen=True)
class ExitRecord:
    """One KVM_RUN of one vCPU: entered at ``t_enter``, returned at ``t_exit`` (ns,
    CLOCK_MONOTONIC), with exit ``reason`` (None: KVM_RUN returned EINTR, a kick)."""

    vcpu: int
    t_enter: int
    t_exit: int
    reason: int | None
    rip: int
    addr: int
    size: int
    is_write: bool
    data: int
    fast: bool

    @property
    def name(self) -> str:
        """``IO out 0x3f8``, ``MMIO read 0xfee00300``, ``HLT``, ``INTR`` ..."""
        if self.reason is None:
            return "INTR (kick or signal)"
        reason = exit_name(self.reason)
        if reason == "IO":
            return f"IO {'out' if self.is_write else 'in'} {self.addr:#x}"
        if reason == "MMIO":
            return f"MMIO {'write' if self.is_write else 'read'} {self.addr:#x}"
        if reason in ("X86_RDMSR", "X86_WRMSR"):
            return f"{reason[4:]} {self.addr:#x}"
        return reason


class TraceRing:
    """The C ring of one vCPU loop: allocated here, filled by ``pyvmm_loop_run``."""

    def __init__(self, loop_c: Any, vcpu: int, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity <= 0 or capacity & (capacity - 1):
            raise ValueError(f"trace capacity must be a power of two, not {capacity}")
        self.vcpu = vcpu
        self.capacity = capacity
        self._records = ffi.new("struct pyvmm_trace_rec[]", capacity)
        self._c = loop_c
        self._read = int(loop_c.trace_head)
        loop_c.trace = self._records
        loop_c.trace_cap = capacity

    def drain(self) -> tuple[bytes, int]:
        """The raw records written since the last drain, oldest first (one copy, decoded
        only when someone looks: :attr:`ExitTrace.records`), and how many the ring had
        already overwritten."""
        head = int(self._c.trace_head)
        start = max(self._read, head - self.capacity)
        dropped = start - self._read
        self._read = head
        raw = ffi.buffer(self._records)
        a, b = start & (self.capacity - 1), head & (self.capacity - 1)
        size = RECORD.size
        if head - start == 0:
            return b"", dropped
        if a < b:
            return bytes(raw[a * size:b * size]), dropped
        return bytes(raw[a * size:]) + bytes(raw[:b * size]), dropped

    def detach(self) -> None:
        self._c.trace = ffi.NULL
        self._c.trace_cap = 0


class ExitTrace:
    """The exits recorded so far (``RunResult.trace``), per vCPU, and the guest events,
    both bounded as the rings are: the newest ``capacity`` records of each vCPU and the
    newest ``max_events`` events are kept, the older ones counted in :attr:`dropped` and
    :attr:`dropped_events` (a guest that sends a million messages must not make the VMM
    keep them all).  Runs append the rings' raw bytes; :attr:`records` decodes them."""

    def __init__(self, records: list[ExitRecord] | None = None,
                 events: list[GuestEvent] | None = None, *, capacity: int = DEFAULT_CAPACITY,
                 max_events: int = DEFAULT_EVENTS) -> None:
        if capacity <= 0 or max_events < 0:
            raise ValueError(f"trace bounds must be positive, not {capacity}/{max_events}")
        self.capacity = capacity
        self.max_events = max_events
        self._given: list[ExitRecord] = list(records or [])
        self._raw: dict[int, bytearray] = {}
        self._lock = threading.Lock()
        self.events: deque[GuestEvent] = deque(maxlen=max_events)
        #: records the rings overwrote before Python read them, or that fell out of the
        #: newest ``capacity`` kept per vCPU
        self.dropped = 0
        #: guest events older than the newest ``max_events``
        self.dropped_events = 0
        #: other timelines merged into the JSON (``pyvmm run --kvm-trace --trace``)
        self.sources: list[TimelineSource] = []
        for e in events or ():
            self.add_event(e)

    def add(self, vcpu: int, raw: bytes, dropped: int) -> None:
        """Records of ``vcpu`` as :meth:`TraceRing.drain` returned them."""
        self.dropped += dropped
        if not raw:
            return
        buf = self._raw.setdefault(vcpu, bytearray())
        buf += raw
        excess = len(buf) - self.capacity * RECORD.size
        if excess > 0:
            del buf[:excess]
            self.dropped += excess // RECORD.size

    def add_event(self, event: GuestEvent) -> None:
        """A guest event (``Machine.on_event`` calls it on the vCPU threads)."""
        with self._lock:
            if len(self.events) == self.max_events:
                self.dropped_events += 1
            if self.max_events:
                self.events.append(event)

    def _decoded(self, vcpu: int | None = None) -> Iterator[ExitRecord]:
        for r in self._given:
            if vcpu is None or r.vcpu == vcpu:
                yield r
        for v, raw in list(self._raw.items()):
            if vcpu is not None and v != vcpu:
                continue
            for t_enter, t_exit, rip, addr, data, reason, size, is_write, flags in RECORD.iter_unpack(raw):
                yield ExitRecord(v, t_enter, t_exit, None if reason == EINTR else reason,
                                 rip, addr, size, bool(is_write), data, bool(flags & FAST))

    @property
    def records(self) -> list[ExitRecord]:
        """Every record kept, decoded (a new list each time: at most ``capacity`` per
        vCPU plus those given to the constructor)."""
        return list(self._decoded())

    def by_vcpu(self, vcpu: int) -> list[ExitRecord]:
        return list(self._decoded(vcpu))

    def metadata(self) -> dict[str, int]:
        """What the trace left out and why: its ``otherData`` in the JSON."""
        meta = {"dropped_records": self.dropped, "records_kept_per_vcpu": self.capacity,
                "dropped_events": self.dropped_events, "events_kept": self.max_events}
        for src in self.sources:
            meta.update(src.metadata())
        return meta

    def trace_events(self, name: str = "pyvmm") -> Iterator[dict[str, Any]]:
        """The trace-event dicts (timestamps in microseconds from the first record), one
        at a time: the records are decoded as they are written, never all at once."""
        with self._lock:
            events = list(self.events)
        vcpus = sorted({r.vcpu for r in self._given} | set(self._raw) | {e.vcpu for e in events})
        t0 = min((r.t_enter for r in self._decoded()), default=None)
        if events:
            first = min(e.time_ns for e in events)
            t0 = first if t0 is None else min(t0, first)
        for src in self.sources:
            first_src = src.first_ns()
            if first_src is not None:
                t0 = first_src if t0 is None else min(t0, first_src)
        base = t0 or 0

        def us(ns: int) -> float:
            return (ns - base) / 1000.0

        yield {"ph": "M", "name": "process_name", "pid": 1, "args": {"name": name}}
        for v in vcpus:
            yield {"ph": "M", "name": "thread_name", "pid": 1, "tid": v + 1,
                   "args": {"name": f"vCPU {v}"}}
            prev: ExitRecord | None = None
            for r in self._decoded(v):
                if prev is not None:
                    yield _exit_slice(prev, r.t_enter, us)
                yield {"ph": "X", "cat": "guest", "name": "KVM_RUN", "pid": 1, "tid": v + 1,
                       "ts": us(r.t_enter), "dur": max(0.0, (r.t_exit - r.t_enter) / 1000.0)}
                prev = r
            if prev is not None:
                yield _exit_slice(prev, prev.t_exit, us)
        for e in events:
            yield {"ph": "i", "s": "t", "cat": "guest-event", "name": _event_name(e), "pid": 1,
                   "tid": e.vcpu + 1, "ts": us(e.time_ns), "args": {"text": e.describe()}}
        for src in self.sources:
            yield from src.trace_events(us)

    def to_json(self, name: str = "pyvmm") -> dict[str, Any]:
        return {"displayTimeUnit": "ns", "traceEvents": list(self.trace_events(name)),
                "otherData": self.metadata()}

    def write_json(self, path: str | os.PathLike[str], name: str = "pyvmm") -> None:
        """Write the trace as trace-event JSON (ui.perfetto.dev, chrome://tracing),
        streaming: one event at a time, so writing holds no more than the trace does."""
        encode = json.JSONEncoder(separators=(",", ":")).encode
        with open(path, "w") as f:
            f.write('{"displayTimeUnit":"ns","otherData":' + encode(self.metadata()) +
                    ',"traceEvents":[')
            sep = ""
            for event in self.trace_events(name):
                f.write(sep + encode(event))
                sep = ","
            f.write("]}\n")


def _exit_slice(r: ExitRecord, until: int, us: Callable[[int], float]) -> dict[str, Any]:
    """The time pyvmm took to answer exit ``r``: from its return to the next KVM_RUN."""
    args: dict[str, Any] = {"rip": f"{r.rip:#x}", "fast": r.fast}
    if r.size:
        args.update(addr=f"{r.addr:#x}", size=r.size, data=f"{r.data:#x}")
    return {"ph": "X", "cat": "exit", "name": r.name, "pid": 1, "tid": r.vcpu + 1,
            "ts": us(r.t_exit), "dur": max(0.0, (until - r.t_exit) / 1000.0), "args": args}


def _event_name(e: GuestEvent) -> str:
    if e.kind == "sync":
        return f"GUEST_SYNC {e.stage}"
    if e.kind == "print":
        return "GUEST_PRINTF"
    return f"GUEST_{e.kind.upper()}"
