"""Typed KVM trace records (:class:`KvmEvent`) and kernel stack symbols.

A record is what one tracepoint hit wrote: the event's name and group, the CPU and the
thread (``common_pid``), which vCPU that thread was running for pyvmm, the time
(CLOCK_MONOTONIC ns: the instance's ``trace_clock`` is ``mono``, the clock pyvmm's own
``--trace`` uses), its fields decoded by the event's ``format`` file, and the kernel stack
when a ``stacktrace`` trigger was set on it.
"""

from __future__ import annotations

import bisect
import contextlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class KvmEvent:
    """One KVM tracepoint hit.  ``ev["port"]`` / ``ev.fields["port"]`` are its fields."""

    name: str
    group: str
    cpu: int
    pid: int
    ts: int
    fields: dict[str, Any] = field(default_factory=dict)
    vcpu: int | None = None
    #: kernel stack, innermost first (``func+0x12/0x80 [module]``); () without stacks
    stack: tuple[str, ...] = ()

    @property
    def full_name(self) -> str:
        """``kvm:kvm_pio``: tracefs' own spelling."""
        return f"{self.group}:{self.name}"

    def __getitem__(self, key: str) -> Any:
        return self.fields[key]

    def matches(self, name: str, filters: dict[str, Any]) -> bool:
        """Named ``name`` (``kvm_pio`` or ``kvm:kvm_pio``) with every field as given."""
        if name != self.name and name != self.full_name:
            return False
        return all(self.fields.get(k) == v for k, v in filters.items())

    def describe(self) -> str:
        body = " ".join(f"{k}={_show(v)}" for k, v in self.fields.items())
        return f"{self.full_name} {body}".rstrip()


def _show(v: Any) -> str:
    if isinstance(v, int) and not isinstance(v, bool) and (v > 9 or v < 0):
        return hex(v)
    return str(v)


class KernelSymbols:
    """``/proc/kallsyms`` as a sorted table: address -> ``name+off [module]``.  Read once
    per process, and only when stacks were asked for.  Without the right to see kernel
    addresses (kptr_restrict: every address 0) stacks stay hex."""

    _cache: KernelSymbols | None = None

    def __init__(self, text: str) -> None:
        rows: list[tuple[int, str, str]] = []
        for line in text.splitlines():
            # "ffffffff81000000 T name\t[module]": only text symbols
            sp = line.find(" ")
            if sp < 0 or line[sp + 1:sp + 2] not in ("t", "T", "w", "W"):
                continue
            parts = line.split()
            if len(parts) < 3:
                continue
            try:
                addr = int(parts[0], 16)
            except ValueError:
                continue
            if addr:
                rows.append((addr, parts[2], parts[3].strip("[]") if len(parts) > 3 else ""))
        rows.sort()
        self._addrs = [r[0] for r in rows]
        self._rows = rows

    @classmethod
    def load(cls) -> KernelSymbols:
        if cls._cache is None:
            text = ""
            with contextlib.suppress(OSError), open("/proc/kallsyms") as f:
                text = f.read()
            cls._cache = cls(text)
        return cls._cache

    def name(self, addr: int) -> str:
        """``kvm_pio+0x1c [kvm]``; the hex address when no symbol covers it."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return f"{addr:#x}"
        base, name, module = self._rows[i]
        off = addr - base
        if off > 1 << 20:  # beyond any function: not this symbol's
            return f"{addr:#x}"
        text = f"{name}+{off:#x}" if off else name
        return f"{text} [{module}]" if module else text


def func(frame: str) -> str:
    """A frame's function name alone: ``kvm_pio+0x1c [kvm]`` -> ``kvm_pio``."""
    return frame.split("+", 1)[0].split(" ", 1)[0]
