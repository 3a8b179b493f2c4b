"""The summary ``pyvmm run --kvm-stat`` prints: KVM's events by name and count, split by
the guest's GUEST_SYNC stages; the most frequent kernel stacks of each event (when stacks
were captured); and, where the host has ``kvm_exit``/``kvm_entry`` (VMX/SVM KVM), exit
reasons with count, share and exit-to-entry latency as ``perf kvm stat report`` prints
them (kvm_pvm has the tracepoints but never hits them).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

from pyvmm.kvmtrace.record import KvmEvent, func
from pyvmm.kvmtrace.session import KvmTrace

#: stacks shown per event
TOP_STACKS = 3
#: frames shown per stack (innermost first; the syscall entry below them is left out)
STACK_DEPTH = 8


def _counts(records: list[KvmEvent]) -> list[str]:
    c = Counter(r.name for r in records)
    return [f"  {n:>8} {name}" for name, n in c.most_common()]


def _nth(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def stage_lines(kt: KvmTrace) -> list[str]:
    """Counts per stretch between consecutive GUEST_SYNCs."""
    syncs = sorted((e.time_ns, e.stage) for e in kt.guest_events if e.kind == "sync")
    records = kt.records
    if not syncs:
        return ["whole run:", *_counts(records)]
    lines: list[str] = []
    bounds: list[tuple[int, int, str]] = []
    prev_t, prev_label = -1, ""
    seen: Counter[int | None] = Counter()
    for t, stage in syncs:
        seen[stage] += 1
        # a stage said again is numbered: "stage 1 (2nd)"
        name = f"stage {stage}" + (f" ({_nth(seen[stage])})" if seen[stage] > 1 else "")
        label = f"before {name}:" if not prev_label else f"between {prev_label} and {name}:"
        bounds.append((prev_t, t, label))
        prev_t, prev_label = t, name
    bounds.append((prev_t, 1 << 64, f"after {prev_label}:"))
    i = 0
    for lo, hi, label in bounds:
        part: list[KvmEvent] = []
        while i < len(records) and records[i].ts < hi:
            if records[i].ts >= lo:
                part.append(records[i])
            i += 1
        if part:
            lines += [label, *_counts(part)]
    return lines


def stack_lines(kt: KvmTrace, top: int = TOP_STACKS) -> list[str]:
    by_name: dict[str, Counter[tuple[str, ...]]] = defaultdict(Counter)
    for r in kt.records:
        if r.stack:
            by_name[r.full_name][r.stack] += 1
    lines: list[str] = []
    for name in sorted(by_name):
        lines.append(f"{name}:")
        for stack, n in by_name[name].most_common(top):
            frames = [func(f) for f in stack]
            while frames and frames[-1].startswith(("entry_SYSCALL", "do_syscall", "__x64_sys", "x64_sys")):
                frames.pop()
            shown = " <- ".join(frames[:STACK_DEPTH]) + (" <- ..." if len(frames) > STACK_DEPTH else "")
            lines.append(f"  {n:>8}x {shown}")
    return lines


@dataclass
class ExitStat:
    reason: str
    count: int = 0
    total_ns: int = 0
    min_ns: int = 0
    max_ns: int = 0

    def add(self, ns: int) -> None:
        self.min_ns = ns if not self.count else min(self.min_ns, ns)
        self.max_ns = max(self.max_ns, ns)
        self.count += 1
        self.total_ns += ns


def exit_reasons(kt: KvmTrace) -> list[ExitStat]:
    """Each kvm_exit paired with the next kvm_entry of the same thread: the time KVM (and
    pyvmm, for exits to userspace) took before the guest ran again."""
    fmt = kt.format_of("kvm:kvm_exit")
    tables = fmt.symbols.get("exit_reason", []) if fmt is not None else []
    pending: dict[int, KvmEvent] = {}
    stats: dict[str, ExitStat] = {}
    for r in kt.records:
        if r.group != "kvm":
            continue
        if r.name == "kvm_exit":
            pending[r.pid] = r
        elif r.name == "kvm_entry" and r.pid in pending:
            ex = pending.pop(r.pid)
            code = ex.fields.get("exit_reason")
            isa = ex.fields.get("isa")
            table = tables[0] if tables and isa == 1 else tables[-1] if tables else {}
            reason = table.get(code & 0xFFFF if isa == 1 and isinstance(code, int) else code,
                               str(code)) if isinstance(code, int) else str(code)
            stats.setdefault(reason, ExitStat(reason)).add(r.ts - ex.ts)
    return sorted(stats.values(), key=lambda s: -s.count)


def exit_lines(kt: KvmTrace) -> list[str]:
    rows = exit_reasons(kt)
    if not rows:
        return []
    n = sum(s.count for s in rows)
    t = sum(s.total_ns for s in rows) or 1
    lines = [f"{'VM-EXIT':>22} {'Samples':>8} {'Samples%':>9} {'Time%':>7} {'Min Time':>10} "
             f"{'Max Time':>10} {'Avg time':>10}"]
    for s in rows:
        lines.append(f"{s.reason:>22} {s.count:>8} {100 * s.count / n:>8.2f}% "
                     f"{100 * s.total_ns / t:>6.2f}% {s.min_ns / 1000:>8.2f}us "
                     f"{s.max_ns / 1000:>8.2f}us {s.total_ns / s.count / 1000:>8.2f}us")
    lines.append(f"Total Samples:{n}, Total events handled time:{t / 1000:.2f}us.")
    return lines


def userspace_lines(kt: KvmTrace) -> list[str]:
    """kvm_userspace_exit by KVM_EXIT_* name (the names from the event's print format)."""
    fmt = kt.format_of("kvm:kvm_userspace_exit")
    tables = fmt.symbols.get("reason", []) if fmt is not None else []
    names = tables[0] if tables else {}
    c = Counter(names.get(r.fields.get("reason"), str(r.fields.get("reason")))  # type: ignore[arg-type]
                for r in kt.records if r.name == "kvm_userspace_exit" and r.group == "kvm")
    return [f"  {n:>8} {name}" for name, n in c.most_common()]


def summary(kt: KvmTrace) -> str:
    """The whole ``--kvm-stat`` text."""
    head = f"--- KVM events ({len(kt.records)}, {len(kt.traced)} event kinds traced"
    head += f"; {kt.lost} LOST: the buffer filled)" if kt.lost else ")"
    lines = [head, *stage_lines(kt)]
    stacks = stack_lines(kt)
    if stacks:
        lines += ["--- most frequent kernel stacks (innermost first)", *stacks]
    exits = exit_lines(kt)
    if exits:
        lines += ["--- exit reasons (kvm_exit to kvm_entry)", *exits]
    elif any(name == "kvm_exit" for _, name, _ in kt.traced):
        lines.append("--- no kvm_exit events: this KVM does not hit them (kvm_pvm handles "
                     "exits in its own path)")
    user = userspace_lines(kt)
    if user:
        lines += ["--- exits to pyvmm (kvm_userspace_exit) by reason", *user]
    return "\n".join(lines) + "\n"
