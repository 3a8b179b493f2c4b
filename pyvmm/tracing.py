"""Exit tracing as a machine service (``Machine.enable_trace``, ``pyvmm run --trace``):
one :class:`~pyvmm.vstate.trace.ExitTrace` per machine, fed by every vCPU loop's ring and
by the guest's events, handed to each run's result.

``pyvmm.vstate.trace`` (the ring and its records) is imported on first use only: a run
that does not trace never loads it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pyvmm.devices.ucall import GuestEvent
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import RunResult

if TYPE_CHECKING:
    from pyvmm.vstate.trace import ExitTrace


class Tracing:
    """A machine's trace: off until :meth:`enable`."""

    def __init__(self) -> None:
        self.trace: ExitTrace | None = None

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
        """After a run: drain each loop's ring into the trace; the result carries it."""
        if self.trace is None:
            return
        for loop in loops:
            if loop.trace is not None:
                self.trace.add(loop.vcpu.id, *loop.trace.drain())
        result.trace = self.trace
