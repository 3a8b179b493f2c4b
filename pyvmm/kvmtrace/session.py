"""``KvmTrace``: KVM's own tracepoints for one process, as a context manager.

::

    with machine.kvm_trace(events=["kvm:kvm_pio"], stacks=True) as kt:
        machine.run()
    kt.count("kvm_pio", port=0x3f8)        # KVM's side of every COM1 byte
    kt.between(1, 2).count("kvm_mmu_get_page")
    kt.stacks("kvm_pio").most_common(1)

How the capture is isolated: a private tracefs instance (its own buffers and enables),
whose ``set_event_pid`` holds this process's threads with the ``event-fork`` option on, so
vCPU threads started later are followed (a ``common_pid`` filter would have to be set after
they exist, and each run starts new ones; measured on the PIO round trip the two cost the
same, +1.4 and +1.9 us per exit for two events, and the pid list skips other processes'
events before they are even built, where a filter builds each one and then drops it).
Its ``trace_clock`` is ``mono``: timestamps are CLOCK_MONOTONIC ns, the clock of pyvmm's
exit trace and guest events.  The instance is
removed on :meth:`stop` (the ``with`` block's end, also on an exception, Ctrl-C and the
signals pyvmm turns into exceptions); one left by a killed process is removed by the next
capture.

Events KVM writes in another thread's context (a timer's hrtimer interrupt while another
task runs) are not this process's and are not seen.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self

from pyvmm.errors import MachineStateError
from pyvmm.kvmtrace.format import (
    EventFormat,
    FormatError,
    PageLayout,
    common_struct,
    parse_format,
    parse_header_page,
)
from pyvmm.kvmtrace.reader import RawReader, iter_page
from pyvmm.kvmtrace.record import KernelSymbols, KvmEvent
from pyvmm.kvmtrace.tracefs import (
    Instance,
    KvmTraceError,
    find_tracefs,
    is_tracefs,
    remove_stale,
    resolve_events,
)

if TYPE_CHECKING:
    from pyvmm.devices.ucall import GuestEvent


class _VcpuId(Protocol):
    @property
    def id(self) -> int: ...


class TracedLoop(Protocol):
    """A vCPU's run loop as a capture sees it (``pyvmm.vstate.loop.VcpuLoop``): the host
    threads that ran it."""

    @property
    def vcpu(self) -> _VcpuId: ...

    @property
    def threads(self) -> Collection[int]: ...


class TracedMachine(Protocol):
    """What a capture needs of a machine (``pyvmm.Machine`` is one): its vCPU loops, to
    tell which host threads ran which vCPU, and its guest events, for :meth:`between`.
    (A protocol, not ``Machine``: this package sits below the run loop and the machine.)"""

    @property
    def loops(self) -> Sequence[TracedLoop]: ...

    def on_event(self, handler: Callable[[GuestEvent], None]) -> None: ...

__all__ = ["DEFAULT_EVENTS", "KvmRecords", "KvmTrace", "KvmTraceError", "TracedLoop", "TracedMachine"]

#: what ``--kvm-trace`` records with no EVENTS: at most a few events per exit (entry, exit,
#: the exit's own event), the MMU's root and shadow-page work, interrupt injection and
#: memslot changes.  Per-PTE and per-instruction events (kvm_mmu_pagetable_walk,
#: kvm_mmu_paging_element, kvm_mmu_set_spte, kvm_mmu_spte_requested, kvm_emulate_insn,
#: kvm_fpu) are opt-in: a page walk writes one event per level per access, and where CPL0
#: code is emulated (kvm_pvm) kvm_emulate_insn fires for every guest instruction.
DEFAULT_EVENTS = (
    "kvm:kvm_exit", "kvm:kvm_entry", "kvm:kvm_userspace_exit", "kvm:kvm_pio", "kvm:kvm_mmio",
    "kvm:kvm_msr", "kvm:kvm_cr", "kvm:kvm_cpuid", "kvm:kvm_page_fault", "kvm:kvm_inj_exception",
    "kvm:kvm_inj_virq", "kvm:kvm_apic", "kvm:kvm_apic_accept_irq", "kvm:kvm_apic_ipi",
    "kvm:kvm_set_irq", "kvm:kvm_msi_set_irq", "kvm:kvm_ioapic_set_irq", "kvm:kvm_pic_set_irq",
    "kvm:kvm_vcpu_wakeup", "kvm:kvm_unmap_hva_range", "kvm:kvm_write_tsc_offset",
    "kvmmmu:kvm_mmu_get_page", "kvmmmu:kvm_mmu_prepare_zap_page", "kvmmmu:kvm_mmu_zap_all_fast",
    "kvmmmu:fast_page_fault", "kvmmmu:kvm_mmu_sync_page", "kvmmmu:kvm_mmu_unsync_page",
)
#: per-CPU buffer (KiB), bounded so that a host with many CPUs does not pin gigabytes
BUFFER_KB = 4096
BUFFER_TOTAL_KB = 256 * 1024
#: the frames of the tracing code itself, dropped from the top of every stack
TRACING_FRAMES = ("trace_event_raw_event_", "perf_trace_", "trace_event_buffer", "event_triggers_call")


def split_spec(spec: str | Iterable[str] | None) -> list[str]:
    """EVENTS as the CLI and the API take them: a comma-separated string or a list."""
    if spec is None:
        return []
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    return [s.strip() for s in items if s.strip()]


class KvmRecords:
    """A sequence of :class:`KvmEvent` with the questions tests ask of it."""

    def __init__(self, records: list[KvmEvent]) -> None:
        self._records = records

    @property
    def records(self) -> list[KvmEvent]:
        return self._records

    def __iter__(self) -> Iterator[KvmEvent]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def events(self, name: str | None = None, **fields: Any) -> list[KvmEvent]:
        """The records named ``name`` (``kvm_pio`` or ``kvm:kvm_pio``; None: all) whose
        fields equal ``fields``."""
        return [r for r in self.records if name is None or r.matches(name, fields)]

    def count(self, name: str, **fields: Any) -> int:
        """How many ``name`` events had ``fields`` (``count("kvm_pio", port=0x3f8)``)."""
        return sum(1 for r in self.records if r.matches(name, fields))

    def names(self) -> Counter[str]:
        """Events by ``group:name`` and count."""
        return Counter(r.full_name for r in self.records)

    def stacks(self, name: str) -> Counter[tuple[str, ...]]:
        """The kernel stacks of ``name`` events and how often each was seen (frames
        innermost first; empty without ``stacks``)."""
        return Counter(r.stack for r in self.records if r.matches(name, {}) and r.stack)

    def on_vcpu(self, vcpu: int) -> KvmRecords:
        return KvmRecords([r for r in self.records if r.vcpu == vcpu])


class KvmTrace(KvmRecords):
    """One capture of KVM's tracepoints (see the module).  ``events``: tracefs spellings
    (``kvm:kvm_pio``, ``kvm_pio``, ``kvmmmu:*``, optionally ``EVENT if FILTER``) or None for
    :data:`DEFAULT_EVENTS` (those this kernel has); ``stacks``: True for a kernel stack on
    every event, or the events that get one."""

    def __init__(self, events: str | Iterable[str] | None = None, *,
                 stacks: bool | str | Iterable[str] = False, machine: TracedMachine | None = None,
                 buffer_kb: int | None = None, tracefs: str | os.PathLike[str] | None = None) -> None:
        super().__init__([])
        self._specs = split_spec(events)
        self._default = not self._specs
        self._stacks_all = stacks is True
        self._stack_specs = [] if isinstance(stacks, bool) else split_spec(stacks)
        self._buffer_kb = buffer_kb
        self._root = Path(tracefs) if tracefs is not None else None
        self._machine: TracedMachine | None = None
        self._instance: Instance | None = None
        self._reader: RawReader | None = None
        self._pages: list[tuple[int, bytes]] = []
        self._formats: dict[int, EventFormat] = {}
        self._layout = PageLayout()
        self._stack_id: int | None = None
        self._decoded: list[KvmEvent] | None = None
        self._guest: list[GuestEvent] = []
        self._tids: dict[int, int] = {}
        #: (group, name, filter) being traced
        self.traced: list[tuple[str, str, str]] = []
        #: events the kernel lost (buffer full before pyvmm read it); 0: none
        self.lost = 0
        #: per-CPU buffers that could not be read ("cpu3: No such device"): their events are missing
        self.errors: list[str] = []
        self.active = False
        if machine is not None:
            self.attach(machine)

    # --- set-up and tear-down ------------------------------------------------
    def attach(self, machine: TracedMachine) -> None:
        """Map threads to this machine's vCPUs and follow its guest events (for
        :meth:`between`)."""
        self._machine = machine
        machine.on_event(self._guest_event)

    def _guest_event(self, ev: GuestEvent) -> None:
        if self.active:
            self._guest.append(ev)

    def start(self) -> Self:
        if self.active:
            return self
        root = self._root or find_tracefs()
        if not is_tracefs(root):
            raise KvmTraceError(f"{root} is not a tracefs mount (no events/ or instances/)")
        remove_stale(root)
        specs = self._specs or [s for s in DEFAULT_EVENTS if (root / "events" / s.replace(":", "/")).is_dir()]
        traced = resolve_events(root, specs)
        stacked = {(g, n) for g, n, _ in resolve_events(root, self._stack_specs)} \
            if self._stack_specs else set()
        formats, layout = self._read_formats(root, traced)
        inst = Instance.create(root)
        try:
            inst.write("tracing_on", "0")
            inst.write("trace_clock", "mono", "the CLOCK_MONOTONIC trace clock (mono)")
            ncpu = max(1, os.cpu_count() or 1)
            kb = self._buffer_kb or max(256, min(BUFFER_KB, BUFFER_TOTAL_KB // ncpu))
            inst.write("buffer_size_kb", str(kb))
            inst.write("options/event-fork", "1", "following new threads (options/event-fork)")
            tids = " ".join(os.listdir("/proc/self/task"))
            inst.write("set_event_pid", tids, "filtering to this process (set_event_pid)")
            if self._stacks_all:
                # one instance option instead of a trigger per event: removing each trigger
                # waits for an RCU grace period (~40 ms apiece here)
                inst.write("options/stacktrace", "1", "kernel stacks (options/stacktrace)")
            for g, n, filt in traced:
                if filt:
                    inst.write(f"events/{g}/{n}/filter", filt, f"the filter {filt!r} of {g}:{n}")
                if not self._stacks_all and (g, n) in stacked:
                    inst.write(f"events/{g}/{n}/trigger", "stacktrace",
                               f"a stacktrace trigger on {g}:{n}")
                inst.write(f"events/{g}/{n}/enable", "1", f"enabling {g}:{n}")
            self._reader = RawReader(inst.path)
            self._reader.start()
            self._instance = inst
            inst.write("tracing_on", "1")
        except BaseException:
            if self._reader is not None:
                self._reader.stop()
                self._reader.close()
                self._reader = None
            inst.remove()
            self._instance = None
            raise
        self.traced, self._formats, self._layout = traced, formats, layout
        self.active = True
        self._decoded = None
        return self

    def _read_formats(self, root: Path, traced: list[tuple[str, str, str]]
                      ) -> tuple[dict[int, EventFormat], PageLayout]:
        ev = root / "events"
        try:
            layout = parse_header_page((ev / "header_page").read_text(),
                                       (ev / "header_event").read_text())
            formats = {}
            for g, n, _ in traced:
                f = parse_format((ev / g / n / "format").read_text(), g)
                common_struct(f)  # every record's type and pid can be read
                formats[f.id] = f
            stack = ev / "ftrace" / "kernel_stack" / "format"
            if stack.exists():
                sf = parse_format(stack.read_text(), "ftrace")
                formats[sf.id] = sf
                self._stack_id = sf.id
        except (OSError, FormatError) as e:
            raise KvmTraceError(f"cannot read tracefs' event formats: {e}") from None
        return formats, layout

    def stop(self) -> None:
        """End the capture: tracing off, the buffers read out, the instance removed."""
        if not self.active:
            return
        self.active = False
        inst, reader = self._instance, self._reader
        self._instance = self._reader = None
        try:
            if inst is not None:
                with contextlib.suppress(KvmTraceError):
                    inst.write("tracing_on", "0")
            if reader is not None:
                reader.stop()
                self._pages += reader.pages
                self.errors += [f"cpu{cpu}: {why}" for cpu, why in sorted(reader.failed.items())]
            if inst is not None:
                self.lost += _lost(inst.path)
        finally:
            if reader is not None:
                reader.close()
            if inst is not None:
                inst.remove()
        self.note_threads()
        self._decoded = None

    def note_threads(self) -> None:
        """Remember which threads ran which vCPU of the attached machine (done by
        :meth:`stop`; call it before closing a machine whose events are still traced)."""
        if self._machine is not None:
            for loop in self._machine.loops:
                for tid in loop.threads:
                    self._tids[tid] = loop.vcpu.id
            self._decoded = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the records -------------------------------------------------------------
    @property
    def records(self) -> list[KvmEvent]:
        """Every event captured, in time order (decoded on first use after :meth:`stop`;
        MachineStateError while the capture runs: its pages are still in the kernel)."""
        if self.active:
            raise MachineStateError("the KVM trace is still recording; stop() it (end its "
                                    "with block) before reading its events")
        if self._decoded is None:
            self._decoded = self._decode()
        return self._decoded

    @property
    def guest_events(self) -> list[GuestEvent]:
        return list(self._guest)

    def _decode(self) -> list[KvmEvent]:
        stacked = self._stack_id is not None and (self._stacks_all or bool(self._stack_specs))
        syms = KernelSymbols.load() if stacked else None
        out: list[KvmEvent] = []
        if not self._formats:
            return out
        common = common_struct(next(iter(self._formats.values())))
        last: dict[int, int] = {}  # cpu -> index in out of its newest event
        for cpu, page in self._pages:
            events, missed = iter_page(page, self._layout)
            if missed and not self.lost:
                self.lost = max(self.lost, missed if missed > 0 else 1)
            for ts, rec in events:
                if len(rec) < 8:
                    continue
                ident, pid = common.unpack_from(rec)
                fmt = self._formats.get(ident)
                if fmt is None:
                    continue
                if ident == self._stack_id:
                    i = last.get(cpu)
                    if i is not None and syms is not None and out[i].pid == pid and not out[i].stack:
                        out[i].stack = _stack(rec, fmt, syms)
                    continue
                last[cpu] = len(out)
                out.append(KvmEvent(fmt.name, fmt.group, cpu, pid, ts, fmt.decode(rec),
                                    self._tids.get(pid)))
        out.sort(key=lambda r: r.ts)
        return out

    def format_of(self, name: str) -> EventFormat | None:
        """The ``format`` of a traced event (its fields and symbolic value names)."""
        return next((f for f in self._formats.values()
                     if name in (f.name, f"{f.group}:{f.name}")), None)

    def stage_times(self, stage: int) -> list[int]:
        """When the guest said GUEST_SYNC ``stage`` (CLOCK_MONOTONIC ns), every time."""
        return [e.time_ns for e in self._guest if e.kind == "sync" and e.stage == stage]

    def between(self, stage_a: int | None, stage_b: int | None) -> KvmRecords:
        """The events after the guest's first GUEST_SYNC ``stage_a`` (None: from the
        start) and before its first GUEST_SYNC ``stage_b`` after that (None: to the end).
        KeyError naming the stage the guest never reached."""
        lo, hi = 0, 1 << 64
        if stage_a is not None:
            times = self.stage_times(stage_a)
            if not times:
                raise KeyError(f"the guest never said GUEST_SYNC {stage_a} while tracing")
            lo = times[0]
        if stage_b is not None:
            times = [t for t in self.stage_times(stage_b) if t >= lo]
            if not times:
                raise KeyError(f"the guest never said GUEST_SYNC {stage_b} after stage {stage_a}")
            hi = times[0]
        return KvmRecords([r for r in self.records if lo <= r.ts < hi])


def _stack(rec: memoryview, fmt: EventFormat, syms: KernelSymbols) -> tuple[str, ...]:
    """The frames of a ``kernel_stack`` record, innermost first, the tracing code left out."""
    size_f, caller = fmt.field("size"), fmt.field("caller")
    if size_f is None or caller is None:
        return ()
    n = size_f.decode(rec)
    room = max(0, (len(rec) - caller.offset) // 8)
    count = min(n if isinstance(n, int) and n > 0 else room, room)
    addrs = [int.from_bytes(rec[caller.offset + 8 * i:caller.offset + 8 * i + 8], "little")
             for i in range(count)]
    frames = [syms.name(a) for a in addrs if a and a != (1 << 64) - 1]
    while frames and frames[0].startswith(TRACING_FRAMES):  # the tracepoint's own code
        frames.pop(0)
    return tuple(frames)


def _lost(instance: Path) -> int:
    """Events the kernel overwrote or dropped in ``instance``, from ``per_cpu/*/stats``."""
    lost = 0
    for stats in (instance / "per_cpu").glob("cpu*/stats"):
        try:
            text = stats.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("overrun", "dropped events"):
                with contextlib.suppress(ValueError):
                    lost += int(value.strip())
    return lost

