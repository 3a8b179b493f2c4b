"""Exit tracing as a machine service (``Machine.enable_trace``, ``pyvmm run --trace``):
one :class:`~pyvmm.vstate.trace.ExitTrace` per machine, fed by every vCPU loop's ring and
by the guest's events, handed to each run's result.

``pyvmm.vstate.trace`` (the ring and its records) is imported on first use only: a run
that does not trace never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

from pyvmm.devices.ucall import GuestEvent
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import RunResult

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.kvmtrace import KvmTrace
    from pyvmm.kvmtrace.session import TracedMachine
    from pyvmm.vstate.trace import ExitTrace


class Tracing:
    """A machine's traces: pyvmm's exits (off until :meth:`enable`) and KVM's own events
    (off until :meth:`kvm`)."""

    def __init__(self) -> None:
        self.trace: ExitTrace | None = None
        self.kvm_trace: KvmTrace | None = None

    def kvm(self, machine: TracedMachine, events: str | Collection[str] | None, *,
            stacks: bool | str | Collection[str] = False, **kw: Any) -> KvmTrace:
        """KVM's tracepoints for ``machine``'s threads: ``with m.kvm_trace() as kt:
        m.run()``, then ``kt.count("kvm_pio")`` (:class:`pyvmm.kvmtrace.KvmTrace`).
        ``pyvmm.kvmtrace`` is imported here, on first use: a run without it never loads it."""
        from pyvmm.kvmtrace import KvmTrace

        self.kvm_trace = KvmTrace(events, stacks=stacks, machine=machine, **kw)
        return self.kvm_trace

    def enable(self, loops: Sequence[VcpuLoop], on_event: Callable[[Callable[[GuestEvent], None]], None],
               capacity: int | None, events: int | None) -> ExitTrace:
        """Record every exit of ``loops`` from now on (the newest ``capacity`` per vCPU,
        default ``vstate.trace.DEFAULT_CAPACITY``) and the newest ``events`` guest events
        (``on_event`` subscribes to them)."""
        from pyvmm.vstate.trace import DEFAULT_CAPACITY, DEFAULT_EVENTS, ExitTrace

        capacity = DEFAULT_CAPACITY if capacity is None else capacity
        if self.trace is None:
            self.trace = ExitTrace(capacity=capacity,
                                   max_events=DEFAULT_EVENTS if events is None else events)
            on_event(self.trace.add_event)
        for loop in loops:
            loop.enable_trace(capacity)
        return self.trace

    def collect(self, loops: Sequence[VcpuLoop], result: RunResult) -> None:
        """After a run: drain each loop's ring into the trace; the result carries it (and
        KVM's events, when captured)."""
        result.kvm_trace = self.kvm_trace
        if self.trace is None:
            return
        for loop in loops:
            if loop.trace is not None:
                self.trace.add(loop.vcpu.id, *loop.trace.drain())
        result.trace = self.trace
