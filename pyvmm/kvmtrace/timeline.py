"""KVM's events in pyvmm's trace-event JSON (``pyvmm run --kvm-trace --trace FILE``).

Both clocks are CLOCK_MONOTONIC: the C run loop stamps each KVM_RUN with
``clock_gettime(CLOCK_MONOTONIC)`` and the capture's tracefs instance uses the ``mono``
trace clock (``ktime_get_mono_fast_ns``, the same clock).  So a KVM event is placed on its
vCPU's track by its own timestamp, with no offset to estimate: a ``kvm_pio`` lies inside
the ``KVM_RUN`` slice whose exit it caused, before pyvmm's slice answering that exit.  Its
fields and kernel stack are the event's args.  Events of threads that ran no vCPU (memslot
changes from the main thread) get a track of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from pyvmm.kvmtrace.session import KvmTrace

#: the track for KVM events of threads that ran no vCPU
OTHER_TID = 1000


def _arg(v: Any) -> Any:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return f"{v:#x}" if v > 9 else v
    if isinstance(v, tuple):
        return [_arg(x) for x in v]
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


class KvmTimeline:
    """A :class:`~pyvmm.vstate.trace.TimelineSource` over a finished :class:`KvmTrace`."""

    def __init__(self, trace: KvmTrace) -> None:
        self.trace = trace

    def first_ns(self) -> int | None:
        records = self.trace.records
        return records[0].ts if records else None

    def metadata(self) -> dict[str, int]:
        return {"kvm_events": len(self.trace.records), "kvm_events_lost": self.trace.lost}

    def trace_events(self, us: Callable[[int], float]) -> Iterator[dict[str, Any]]:
        other = False
        for r in self.trace.records:
            tid = OTHER_TID if r.vcpu is None else r.vcpu + 1
            if tid == OTHER_TID and not other:
                other = True
                yield {"ph": "M", "name": "thread_name", "pid": 1, "tid": OTHER_TID,
                       "args": {"name": "KVM (threads with no vCPU)"}}
            args: dict[str, Any] = {k: _arg(v) for k, v in r.fields.items()}
            args["host_tid"] = r.pid
            args["cpu"] = r.cpu
            if r.stack:
                args["stack"] = list(r.stack)
            yield {"ph": "i", "s": "t", "cat": "kvm", "name": r.full_name, "pid": 1, "tid": tid,
                   "ts": us(r.ts), "args": args}
