"""What KVM itself did during a run: KVM's tracepoints (``kvm``/``kvmmmu`` event groups)
and their kernel stacks, captured in a private tracefs instance filtered to this process.

:class:`~pyvmm.kvmtrace.session.KvmTrace` is the service (``Machine.kvm_trace``,
``pyvmm run --kvm-trace``); the modules below it, one concept each: ``tracefs`` (finding
and mounting tracefs, the instance and its files), ``format`` (tracefs' own event
``format`` files), ``reader`` (the binary per-CPU ring-buffer pages), ``record`` (the typed
records), ``stat`` (the summary ``--kvm-stat`` prints), ``timeline`` (KVM's events in the
``--trace`` JSON).
"""

from pyvmm.kvmtrace.record import KvmEvent
from pyvmm.kvmtrace.session import DEFAULT_EVENTS, KvmTrace, KvmTraceError

__all__ = ["DEFAULT_EVENTS", "KvmEvent", "KvmTrace", "KvmTraceError"]
