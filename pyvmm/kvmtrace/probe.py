"""``pyvmm doctor``'s kvm-trace group: can this host show what KVM did, found by doing it.

Each probe runs the probe guest (``nop``: one GUEST_DONE, so one port write that KVM
emulates) inside a capture and looks for KVM's own events; a host that cannot (not root,
no tracefs, lockdown, no KVM event groups) answers "no" with what is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pyvmm.kvmtrace.session import KvmTrace
from pyvmm.kvmtrace.tracefs import KvmTraceError, find_tracefs

Run = Callable[[], object]


def _capture(run: Run, events: list[str], stacks: bool = False) -> KvmTrace | str:
    try:
        kt = KvmTrace(events, stacks=stacks)
        with kt:
            run()
    except KvmTraceError as e:
        return str(e)
    return kt


def tracefs_usable(run: Run) -> tuple[bool, str]:
    """tracefs mounted (or mountable), an instance can be made, and KVM's port-write event
    of the probe guest is seen in it."""
    got = _capture(run, ["kvm:kvm_pio"])
    if isinstance(got, str):
        return False, got
    root = find_tracefs(mount=False)
    n = got.count("kvm_pio")
    if not n:
        return False, f"tracefs at {root} works but the probe guest's port write left no kvm_pio"
    return True, f"tracefs at {root}: a private instance saw the probe guest's {n} kvm_pio"


def group_present(group: str) -> tuple[bool, str]:
    try:
        root = find_tracefs()
    except KvmTraceError as e:
        return False, str(e)
    d = Path(root) / "events" / group
    if not d.is_dir():
        return False, f"this kernel has no {group} trace events"
    n = sum(1 for e in d.iterdir() if e.is_dir())
    return True, f"{n} {group} events"


def stacks_work(run: Run) -> tuple[bool, str]:
    got = _capture(run, ["kvm:kvm_pio"], stacks=True)
    if isinstance(got, str):
        return False, got
    stacks = got.stacks("kvm_pio")
    if not stacks:
        return False, "a stacktrace trigger on kvm:kvm_pio gave no kernel stack"
    frames = stacks.most_common(1)[0][0]
    top = " <- ".join(f.split("+")[0] for f in frames[:3])
    return True, f"kvm_pio's stack has {len(frames)} frames ({top} ...)"


def exit_events(run: Run) -> tuple[bool, str]:
    """kvm_exit/kvm_entry fire (VMX/SVM KVM); kvm_pvm has them but never hits them."""
    got = _capture(run, ["kvm:kvm_exit", "kvm:kvm_entry"])
    if isinstance(got, str):
        return False, got
    n = got.count("kvm_exit")
    if not n:
        return False, "kvm:kvm_exit exists but this KVM never hits it (exit reasons cannot be shown)"
    return True, f"{n} kvm_exit for the probe guest"
