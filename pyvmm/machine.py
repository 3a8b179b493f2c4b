"""``Machine``: the embedding API, a thin front over the layers below.

A machine owns every fd and mapping it creates and releases them in :meth:`Machine.close`
(or at the end of a ``with`` block)::

    with Machine.from_file("guests/build/hello.elf") as m:
        result = m.run(timeout=10)
    print(result.exit_code, result.text)

Data flows one way: guest file -> loader plan (``pyvmm.loader``) -> memory and vCPU state
(:meth:`load`) -> the run loops (``pyvmm.vstate``) -> exit decoding -> devices -> result.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Self

from pyvmm.devices.base import Device, VcpuContext, all_ones
from pyvmm.devices.bus import Bus
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.msr import MsrHandlers, MsrRead, MsrWrite
from pyvmm.devices.post import PostPort
from pyvmm.devices.uart import Uart16550
from pyvmm.devices.ucall import UCALL_PORT, GuestEvent, SyncHandler, UcallDevice
from pyvmm.errors import (
    ConfigError,
    GuestExitedError,
    GuestImageError,
    MachineClosedError,
    MachineStateError,
)
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.system import CAP_MAX_VCPUS, CAP_SET_IDENTITY_MAP_ADDR, CAP_SET_TSS_ADDR, Kvm
from pyvmm.kvm.vcpu import MP_STATE_UNINITIALIZED, Vcpu
from pyvmm.kvm.vm import PIT_SPEAKER_DUMMY, Vm
from pyvmm.loader import LoadPlan, open_image
from pyvmm.loader.source import read_file
from pyvmm.loader.symbols import Symbols
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.vstate.fastpath import FastEntry, Space
from pyvmm.vstate.history import EventLog, HistoryLimits, SerialLog
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import FINAL, Outcome, RunResult, RunStatus
from pyvmm.vstate.runner import Runner
from pyvmm.x86 import layout
from pyvmm.x86.cpuid import parse_cpu_features
from pyvmm.x86.entry import EntryState, apply_entry
from pyvmm.x86.reset import reset_vcpu

if TYPE_CHECKING:
    from pyvmm.debug.debugger import Debugger
    from pyvmm.kvm.stats import StatDesc, StatsReader, StatValue
    from pyvmm.kvmtrace import KvmTrace
    from pyvmm.loader import GuestImage
    from pyvmm.platform.pc import PcPlatform
    from pyvmm.vstate.snapshot import Snapshot
    from pyvmm.vstate.trace import ExitTrace

#: exits each vCPU's trace ring keeps (pyvmm.vstate.trace.DEFAULT_CAPACITY; imported lazily:
#: a run that does not trace never loads the module)
TRACE_CAPACITY = 1 << 16
#: guest events a trace keeps (pyvmm.vstate.trace.DEFAULT_EVENTS)
TRACE_EVENTS = 1 << 16

__all__ = ["IRQCHIP_MODES", "HistoryLimits", "Machine", "RunResult", "RunStatus"]

#: "kernel": KVM_CREATE_IRQCHIP (PIC, IOAPIC and LAPICs in KVM); "split": only the LAPICs in
#: KVM (KVM_CAP_SPLIT_IRQCHIP; IOAPIC/PIC accesses exit); "none": no interrupt controller.
IRQCHIP_MODES = ("kernel", "split", "none")
SPLIT_IRQCHIP_PINS = 24
#: the guest runtime has stacks for 64 APs; KVM_CAP_MAX_VCPUS may allow fewer
MAX_CPUS = 64
#: what QEMU's -kernel gives a multiboot kernel by default
MULTIBOOT_MEM = 128 << 20


#: how often next_event() looks whether a start()-ed run has ended
EVENT_POLL = 0.05


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` as the run and wait methods take it: None (no limit) or seconds >= 0;
    infinity is None.  TypeError for a non-number, ValueError for a negative or NaN one."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"timeout must be a number of seconds or None, not {type(timeout).__name__}")
    if not timeout >= 0:  # NaN too
        raise ConfigError(f"timeout {timeout} is not a number of seconds >= 0 (None: no limit)")
    return None if math.isinf(timeout) else timeout


class PortHandler(Device):
    """Adapts two callables to the :class:`Device` interface for :meth:`Machine.add_handler`."""

    def __init__(self, name: str, read: Callable[[int, int], int] | None,
                 write: Callable[[int, int, int], None] | None) -> None:
        self.name = name
        self._read = read
        self._write = write

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        return self._read(addr, size) if self._read else all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        if self._write:
            self._write(addr, size, value)


def memory_size(mem: int | str) -> int:
    """``mem`` in bytes: an int is bytes; a string takes K/M/G/T suffixes and a bare number
    is MiB, as QEMU's ``-m`` (and ``pyvmm run --mem``).  ConfigError for sizes a guest
    cannot have here; for an int that is no whole number of pages it asks whether MiB were
    meant (``mem=64`` is 64 bytes, ``--mem 64`` 64 MiB)."""
    if isinstance(mem, bool) or not isinstance(mem, int | str):
        raise ConfigError(f"memory size must be an int (bytes) or a size string such as '64M', "
                          f"not {type(mem).__name__} {mem!r}")
    try:
        size = layout.parse_size(mem, default_unit=layout.MiB) if isinstance(mem, str) else mem
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if size <= 0 or size % 4096:
        hint = f" (an int is bytes: did you mean '{mem}M'?)" if isinstance(mem, int) and size > 0 else ""
        raise ConfigError(f"memory size {size} bytes is not a positive multiple of 4 KiB{hint}")
    host = layout.host_memory()
    if host and size > host:
        raise ConfigError(f"{layout.format_size(size)} of guest RAM is more than this host's "
                          f"{layout.format_size(host)} of memory")
    return size


class Machine:
    """A VM with ``mem`` of RAM (bytes, or a size string such as ``"64M"``), ``cpus`` vCPUs,
    an interrupt controller (``irqchip``), a 16550 at 0x3f8, debug-exit at 0xf4, the POST
    port 0x80 and the test protocol's port 0x1000.  ``cpu_features`` (``"+x2apic,-pcid"``)
    adds or hides CPUID bits, as QEMU's ``-cpu MODEL,+flag,-flag``.

    ``serial`` receives guest output as it comes; ``history`` bounds what the API keeps
    of it and of guest events for results.

    Attributes, for tools and tests that go below the API:

    - ``mem_size``: guest RAM in bytes (``mem`` parsed);
    - ``memory``: the guest's RAM (:class:`pyvmm.memory.GuestMemory`: ``read``, ``write``,
      ``read_int``, its memslots);
    - ``vcpus``: the :class:`pyvmm.kvm.vcpu.Vcpu` objects, BSP first (registers, MSRs,
      LAPIC by ioctl);
    - ``symbols``: the loaded guest's symbol table (None before a guest is loaded);
    - ``vm``, ``kvm``, ``bus``, ``pc``, ``image``, ``plan``, ``serial``, ``events``.

    Misuse raises :class:`~pyvmm.errors.MachineStateError` (a RuntimeError): any method
    after :meth:`close` (:class:`~pyvmm.errors.MachineClosedError`), changing the machine
    while it runs, waiting for events with no :meth:`start`-ed run.
    """

    kvm: Kvm
    vm: Vm
    memory: GuestMemory
    bus: Bus
    msrs: MsrHandlers
    vcpus: list[Vcpu]
    loops: list[VcpuLoop]
    image: GuestImage | None
    plan: LoadPlan | None
    pc: PcPlatform | None
    serial: SerialLog
    events: EventLog

    def __init__(self, *, mem: int | str = "64M", cpus: int = 1, strict_io: bool = False,
                 kvm_path: str | None = None, serial: Callable[[bytes], None] | None = None,
                 cmdline: str = "", irqchip: str = "kernel", pit: bool = False,
                 history: HistoryLimits | None = None, cpu_features: str = "",
                 ram_file: tuple[int, list[int]] | None = None) -> None:
        self.mem_size = memory_size(mem)
        if not 1 <= cpus <= MAX_CPUS:
            raise ConfigError(f"cpus must be 1..{MAX_CPUS}, not {cpus}")
        if irqchip not in IRQCHIP_MODES:
            raise ConfigError(f"irqchip must be one of {', '.join(IRQCHIP_MODES)}, not {irqchip!r}")
        if pit and irqchip != "kernel":
            raise ConfigError("the in-kernel PIT needs the in-kernel irqchip (irqchip='kernel')")
        if irqchip == "none" and cpus > 1:
            raise ConfigError("more than one vCPU needs an irqchip (INIT/SIPI go through the LAPIC)")
        self.cpus = cpus
        self.cmdline = cmdline
        self.cpu_features = cpu_features
        self._reset_lapics: list[bytes | None] = []
        self.irqchip = irqchip
        self.pit = pit
        limits = history or HistoryLimits()
        self.serial = SerialLog(limits.serial, serial)
        self.events = EventLog(limits.events)
        self._listeners: list[Callable[[GuestEvent], None]] = []
        self.image = None
        self.plan = None
        self.pc = None
        self.vcpus = []
        self.loops = []
        self._stats: list[tuple[str, StatsReader]] = []
        self._runner: Runner | None = None
        self._debugger: Debugger | None = None
        self._trace: ExitTrace | None = None
        self._kvm_trace: KvmTrace | None = None
        self._loaded = False
        self._bg: threading.Thread | None = None
        self._bg_result: RunResult | None = None
        self._bg_error: BaseException | None = None
        self._ended: RunResult | None = None
        self._closed = False
        self.kvm = Kvm(kvm_path)
        try:
            self._build(strict_io, ram_file)
        except BaseException:
            self.close()
            raise

    def _build(self, strict_io: bool, ram_file: tuple[int, list[int]] | None) -> None:
        # three KVM_CHECK_EXTENSIONs, not Kvm.capabilities (~90 of them): machines are
        # created by the thousand and every microsecond of set-up counts
        max_vcpus = self.kvm.check_extension(CAP_MAX_VCPUS) or 1
        if self.cpus > max_vcpus:
            raise KvmError("KVM_CREATE_VCPU", 22, f"this KVM allows {max_vcpus} vCPUs")
        self.vm = self.kvm.create_vm()
        if self.kvm.check_extension(CAP_SET_TSS_ADDR):
            self.vm.set_tss_addr(layout.TSS_ADDR)
        if self.kvm.check_extension(CAP_SET_IDENTITY_MAP_ADDR):
            self.vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        if self.irqchip == "kernel":
            # before the memslots: on kvm_pvm a memslot added to a VM that has an in-kernel
            # PIC/IOAPIC waits for an SRCU grace period (~6 ms); this order pays it once, at
            # creation, instead of ~15 ms at destruction
            self.vm.create_irqchip()
            if self.pit:
                self.vm.create_pit2(PIT_SPEAKER_DUMMY)  # port 0x61 handled in KVM
        elif self.irqchip == "split":
            self.vm.enable_split_irqchip(SPLIT_IRQCHIP_PINS)
        self.memory = GuestMemory(self.vm)
        for i, (gpa, size) in enumerate(layout.ram_ranges(self.mem_size)):
            file = (ram_file[0], ram_file[1][i]) if ram_file is not None else None
            # a clone's slots log dirty pages from the start: turning it on later would
            # change the memslot, which waits for an SRCU grace period under an irqchip
            self.memory.add_ram(gpa, size, name="ram" if gpa == 0 else "ram-high", file=file,
                                log_dirty=file is not None)
        self.bus = Bus(strict=strict_io)
        self.msrs = MsrHandlers()
        self.uart = Uart16550(self.serial.write)
        self.uart.on_fast_change = self._sync_fast
        self.debug_exit = DebugExit()
        self.post = PostPort()
        self.ucall = UcallDevice(self.memory, lambda: self.image.symbols if self.image else None,
                                 self._emit)
        for dev, port, n in ((self.uart, 0x3F8, 8), (self.debug_exit, 0xF4, 4), (self.post, 0x80, 1),
                             (self.ucall, UCALL_PORT, 4)):
            self.bus.register(Space.PIO, port, n, dev)
        supported: list[dict[str, int]] = []

        def leaves() -> list[dict[str, int]]:  # only when the CPUID is not cached yet
            if not supported:
                supported.extend(self.kvm.get_supported_cpuid())
            return supported

        features = parse_cpu_features(self.cpu_features, leaves()) if self.cpu_features else {}
        for i in range(self.cpus):
            vcpu = self.vm.create_vcpu(i)
            self.vcpus.append(vcpu)
            self._reset_lapics.append(reset_vcpu(vcpu, leaves, self.cpus,
                                                 lapic=self.irqchip != "none", features=features,
                                                 kvm_path=self.kvm.path))

    # --- building from a guest file ---------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, fmt: str | None = None, cmdline: str = "",
                  initrd: str | os.PathLike[str] | None = None, **kw: Any) -> Machine:
        """A machine for the guest at ``path`` (format detected, or ``fmt``), loaded and
        ready to run.  The file is read and checked first, so a bad file costs no VM.
        Multiboot kernels get 128 MiB, the PIT and the PC platform by default, as under
        ``qemu-system-x86_64 -kernel``."""
        mem = memory_size(kw["mem"]) if "mem" in kw else None
        image = open_image(path, mem=mem, fmt=fmt)
        if image.format == "multiboot":
            kw.setdefault("mem", MULTIBOOT_MEM)
            kw.setdefault("pit", kw.get("irqchip", "kernel") == "kernel")
        m = cls(cmdline=cmdline, **kw)
        try:
            if image.format == "multiboot":
                m.add_pc_platform()
            m.load(m.plan_for(image, cmdline=cmdline, initrd=initrd), image)
        except BaseException:
            m.close()
            raise
        return m

    @classmethod
    def from_elf(cls, path: str | os.PathLike[str], **kw: Any) -> Machine:
        """:meth:`from_file` for an ELF64 guest (pyvmm's entry convention)."""
        return cls.from_file(path, fmt="elf64", **kw)

    @classmethod
    def from_multiboot(cls, path: str | os.PathLike[str], **kw: Any) -> Machine:
        """:meth:`from_file` for a multiboot kernel, as QEMU's ``-kernel`` boots it."""
        return cls.from_file(path, fmt="multiboot", **kw)

    def plan_for(self, image: GuestImage, *, cmdline: str = "",
                 initrd: str | os.PathLike[str] | None = None) -> LoadPlan:
        """Lay ``image`` out against this machine's RAM (the initrd is read here, bounded
        by the RAM it must fit in)."""
        data = None
        if initrd is not None:
            data = read_file(initrd, self.mem_size, what="initrd", error=ConfigError)
        try:
            args = os.fsencode(cmdline)
        except UnicodeError as e:
            raise ConfigError(f"the command line cannot be encoded: {e}") from None
        ram = self.memory.ram_ranges()
        name = os.fsdecode(initrd) if initrd is not None else ""
        # the same image planned for the same RAM and arguments gives the same plan (a
        # harness or fuzzer reusing a parsed image skips rebuilding page tables and boot info)
        key = (tuple(ram), args, self.cpus, data, name)
        plans: dict[Any, LoadPlan] = image.__dict__.setdefault("_plans", {})
        plan = plans.get(key)
        if plan is None:
            plan = image.plan(ram, cmdline=args, ncpus=self.cpus, initrd=data, initrd_name=name)
            if len(plans) >= 8:
                plans.clear()
            plans[key] = plan
        return plan

    def load(self, plan: LoadPlan, image: GuestImage | None = None) -> None:
        """Apply a loader's plan: its bytes to RAM, its entry state to the BSP."""
        self._check_open("load")
        for gpa, data in plan.writes:
            self.memory.write(gpa, data)
        apply_entry(self.vcpus[0], plan.entry)
        self.plan = plan
        self._loaded = True
        self.cmdline = plan.cmdline
        if image is not None:
            self.image = image

    def load_file(self, path: str | os.PathLike[str], *, fmt: str | None = None,
                  cmdline: str = "", initrd: str | os.PathLike[str] | None = None) -> GuestImage:
        """Read, plan and load a guest into this (already built) machine."""
        self._check_open("load_file")
        image = open_image(path, mem=self.mem_size, fmt=fmt)
        self.load(self.plan_for(image, cmdline=cmdline, initrd=initrd), image)
        return image

    def enter_real_mode(self, address: int) -> None:
        """Start the BSP in real mode at ``address`` (below 1 MiB, 16-byte aligned) instead
        of the loader's entry: for guests that bring themselves up from real mode."""
        self._check_open("enter_real_mode")
        apply_entry(self.vcpus[0], EntryState.real_mode(address))

    @property
    def symbols(self) -> Symbols | None:
        """The loaded guest's symbol table (``symbols.address_of(name)``,
        ``symbols.lookup(addr)`` -> ``"name+0x12"``), None before a guest is loaded."""
        return self.image.symbols if self.image is not None else None

    # --- devices and memory ----------------------------------------------------
    def add_device(self, space: Space, base: int, length: int, device: Device) -> None:
        """Put ``device`` on the bus; its fast entries (if any) reach every vCPU's table."""
        self._check_open("add_device")
        new = self.bus.register(space, base, length, device)
        for loop in self.loops:
            for fe in new:
                loop.add_fast_entry(fe)
            loop.sync_claims()

    def add_handler(self, space: Space, base: int, length: int, *,
                    read: Callable[[int, int], int] | None = None,
                    write: Callable[[int, int, int], None] | None = None,
                    name: str = "handler") -> None:
        """A Python handler for a port or MMIO range: ``read(addr, size) -> int`` and
        ``write(addr, size, value)``; ``addr`` is absolute.  Called on the vCPU's thread."""
        self.add_device(space, base, length, PortHandler(name, read, write))

    def add_pc_platform(self) -> PcPlatform:
        """The PC devices and firmware state QEMU's ``-kernel`` guests expect."""
        self._check_open("add_pc_platform")
        if self.pc is None:
            from pyvmm.platform.pc import PcPlatform  # multiboot guests only: loaded on use

            self.pc = PcPlatform(self)
        return self.pc

    def add_msr_handler(self, index: int, *, read: MsrRead | None = None,
                        write: MsrWrite | None = None) -> None:
        """Send guest RDMSR/WRMSR of ``index`` to Python: KVM's MSR filter denies the MSR
        and KVM_CAP_X86_USER_SPACE_MSR turns the denial into a KVM_EXIT_X86_RDMSR/WRMSR.
        A direction with no handler gives the guest #GP."""
        self._check_open("add_msr_handler")
        if not self.msrs:
            self.vm.enable_user_space_msr()
        self.msrs.add(index, read, write)
        self.vm.deny_msrs(self.msrs.indices())

    def add_ram(self, gpa: int, size: int, **kw: Any) -> MemoryRegion:
        """Another memslot (``readonly=True`` for ROM, ``log_dirty=True`` for dirty logging)."""
        self._check_open("add_ram")
        return self.memory.add_ram(gpa, size, **kw)

    def on_sync(self, handler: SyncHandler) -> None:
        """Call ``handler(event)`` at every GUEST_SYNC, on the vCPU's thread, while that vCPU
        waits: the place to inspect or change the VM at a known point of the guest."""
        self.ucall.sync_handlers.append(handler)

    def run_to_sync(self, stage: int, timeout: float | None = None, *,
                    python_loop: bool = False) -> RunResult:
        """:meth:`run` until the guest's first GUEST_SYNC of ``stage``, and stop every vCPU
        right there (the sync's own vCPU never re-enters the guest): the point to take a
        snapshot.  Reached when the result is ``stopped`` and holds that sync
        (``r.syncs(stage)``); otherwise the run ended another way first."""
        reached: list[bool] = []

        def stop_at(ev: GuestEvent) -> None:
            if ev.stage == stage and not reached:
                reached.append(True)
                self.stop()

        self.on_sync(stop_at)
        try:
            return self.run(timeout, python_loop=python_loop)
        finally:
            self.ucall.sync_handlers.remove(stop_at)

    def on_event(self, handler: Callable[[GuestEvent], None]) -> None:
        """Call ``handler(event)`` for every guest event as it happens (on the vCPU's
        thread, before sync handlers run): ``pyvmm run -v`` prints them."""
        self._listeners.append(handler)

    def _emit(self, event: GuestEvent) -> None:
        self.events.append(event)
        for listener in self._listeners:
            listener(event)
        if event.kind == "print":
            self.serial.write(event.text.encode() + (b"" if event.text.endswith("\n") else b"\n"))

    def _sync_fast(self, fe: FastEntry, only_if_changed: bool = False) -> None:
        for loop in self.loops:
            loop.sync_fast_entry(fe, only_if_changed)

    # --- events ----------------------------------------------------------------
    def next_event(self, timeout: float | None = None) -> GuestEvent | None:
        """The next guest event of a run started with :meth:`start`, or None after
        ``timeout`` seconds or once that run has ended with no event left to read.
        MachineStateError when no run was started (nothing could ever come)."""
        self._check_open("next_event")
        timeout = check_timeout(timeout)
        if self._bg is None:
            raise MachineStateError("next_event()/wait_event() read the events of a run started "
                                    "with start(); call start() first (run() returns its events "
                                    "in RunResult.events)")
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            running = self._bg.is_alive()
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            # short waits while the run goes on, so that its end is seen; none after it
            wait = 0.0 if not running else EVENT_POLL if left is None else min(left, EVENT_POLL)
            ev = self.events.next(wait)
            if ev is not None or not running or (deadline is not None and
                                                 time.monotonic() >= deadline):
                return ev

    def wait_event(self, kind: str | None = None, stage: int | None = None,
                   timeout: float | None = None) -> GuestEvent | None:
        """The next guest event of ``kind`` (and sync ``stage``), or None after ``timeout``
        seconds or when the run ended without one; events that do not match are skipped
        (they stay in the history).  As :meth:`next_event`, it needs a :meth:`start`-ed run."""
        timeout = check_timeout(timeout)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.next_event(left)
            if ev is None:
                return None
            if (kind is None or ev.kind == kind) and (stage is None or ev.stage == stage):
                return ev

    # --- running ---------------------------------------------------------------
    def _runner_for(self) -> Runner:
        if self._runner is None:
            self.loops = [VcpuLoop(v, self.bus, self.msrs) for v in self.vcpus]
            self._runner = Runner(self.loops, self.bus, self.memory, lambda: self.symbols,
                                  self.serial, self.events, self.stats, self._descriptors,
                                  self._sleep_s3)
        return self._runner

    def _sleep_s3(self, left: float | None, stop: threading.Event) -> bool | Outcome:
        """The guest entered ACPI S3: sleep until the PC platform's wake-up (the RTC
        alarm), then reset every vCPU as the chipset does, RAM kept, and let the BSP resume
        in real mode at the FACS's waking vector.  False when no wake-up comes in time; a
        crash outcome when the guest's waking vector cannot be resumed at."""
        from pyvmm.platform.pc import ResumeError

        wait = self.pc.seconds_to_wake() if self.pc is not None else None
        if wait is None or (left is not None and wait > left):
            stop.wait(left)  # asleep for good: until the timeout, a stop or a signal
            return False
        if stop.wait(wait):
            return False
        assert self.pc is not None
        try:
            entry = self.pc.resume_entry()
        except ResumeError as e:  # the guest's value: a guest fault, never a usage error
            return Outcome(RunStatus.CRASH, self.vcpus[0].id, reason=str(e))
        for vcpu, lapic in zip(self.vcpus, self._reset_lapics, strict=True):
            if lapic is not None:
                vcpu.set_lapic(lapic)
            if vcpu.id:
                vcpu.set_mp_state(MP_STATE_UNINITIALIZED)  # APs wait for INIT/SIPI again
        self.pc.reset_after_sleep()
        apply_entry(self.vcpus[0], entry)
        self.pc.woke()
        return True

    def enable_trace(self, capacity: int = TRACE_CAPACITY, *, events: int = TRACE_EVENTS
                     ) -> ExitTrace:
        """Record every exit from now on (the C loop keeps the newest ``capacity`` per
        vCPU, a power of two, between runs and across them) and the newest ``events``
        guest events (older ones are counted: ``ExitTrace.dropped_events``); each run's
        result carries the trace so far (``RunResult.trace``)."""
        self._check_open("enable_trace")
        from pyvmm.vstate.trace import ExitTrace

        if self._trace is None:
            self._trace = ExitTrace(capacity=capacity, max_events=events)
            self.on_event(self._trace.add_event)
        self._runner_for()
        for loop in self.loops:
            loop.enable_trace(capacity)
        return self._trace

    def kvm_trace(self, events: str | Collection[str] | None = None, *,
                  stacks: bool | str | Collection[str] = False, **kw: Any) -> KvmTrace:
        """What KVM itself did while this machine runs: ``with m.kvm_trace() as kt:
        m.run()``, then ``kt.count("kvm_pio")`` (:class:`pyvmm.kvmtrace.KvmTrace`; needs
        root and tracefs).  Results of runs from here on carry it (``RunResult.kvm_trace``)."""
        self._check_open("kvm_trace")
        from pyvmm.kvmtrace import KvmTrace

        self._kvm_trace = KvmTrace(events, stacks=stacks, machine=self, **kw)
        return self._kvm_trace

    # --- snapshots ---------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Everything the guest can observe, now (the machine must be stopped: between
        runs, not from a sync handler).  From here on RAM writes are tracked, so that
        :meth:`restore` of this snapshot copies back only the pages written since."""
        from pyvmm.vstate.snapshot import take

        self._check_open("snapshot")
        self._check_stopped("snapshot")
        return take(self)

    def save_snapshot(self, path: str | os.PathLike[str]) -> None:
        """:meth:`snapshot` written straight to ``path`` (as :meth:`Snapshot.save`), RAM
        streamed from the guest's own memory: no in-memory copy of guest RAM."""
        from pyvmm.vstate.snapshot import save_machine

        self._check_open("save_snapshot")
        self._check_stopped("snapshot")
        save_machine(self, path)

    def restore(self, snap: Snapshot) -> int:
        """Put the machine back as it was at ``snap`` (taken from this machine, or one of
        the same shape); returns how many RAM pages were copied.  A guest that had ended
        can run again.  ``snap`` is a :class:`~pyvmm.vstate.snapshot.Snapshot` (TypeError
        for anything else): for a file, ``restore(pyvmm.vstate.snapshot.load(path))``, or a
        new machine with :meth:`from_snapshot`."""
        from pyvmm.vstate.snapshot import Snapshot, SnapshotError, restore

        if not isinstance(snap, Snapshot):
            what = f"{type(snap).__name__} {snap!r}" if isinstance(snap, str | os.PathLike) \
                else type(snap).__name__
            raise TypeError(f"restore() takes a Snapshot, not {what}; for a snapshot file use "
                            "restore(pyvmm.vstate.snapshot.load(path)) or Machine.from_snapshot(path)")
        self._check_open("restore")
        self._check_stopped("restore")
        try:
            pages = restore(self, snap)
        except ValueError as e:  # a struct of the wrong size from a file
            raise SnapshotError(f"the snapshot is corrupt: {e}") from None
        for fe in self.bus.fast_entries:  # a device's state may have changed its answers
            self._sync_fast(fe, only_if_changed=True)
        self._ended = None
        self._loaded = True
        if self._debugger is not None:
            self._debugger.reset()
        return pages

    @classmethod
    def from_snapshot(cls, source: str | os.PathLike[str] | Snapshot, **kw: Any) -> Machine:
        """A machine that goes on from a snapshot (a file from :meth:`Snapshot.save`, or an
        in-memory one).  From a file the RAM is mapped copy-on-write from it: nothing is
        copied up front.  ``kw`` may set what is not part of the guest's state (``serial``,
        ``history``, ``strict_io``)."""
        from pyvmm.snapshot_file import ram_file as snapshot_ram_file
        from pyvmm.vstate.snapshot import Snapshot, load

        snap = source if isinstance(source, Snapshot) else load(source)
        try:
            return cls._clone(snap, snapshot_ram_file(snap), snap is not source, **kw)
        finally:
            if snap is not source:  # this call's own: its fd and mapping go now, not at GC
                snap.close()

    @classmethod
    def _clone(cls, snap: Snapshot, ram_file: tuple[int, list[int]] | None, owned: bool,
               **kw: Any) -> Machine:
        from pyvmm.vstate.snapshot import SnapshotError

        cfg = snap.config
        try:
            m = cls(mem=cfg["mem"], cpus=cfg["cpus"], irqchip=cfg["irqchip"], pit=cfg["pit"],
                    cpu_features=cfg.get("cpu_features", ""), cmdline=cfg.get("cmdline", ""),
                    ram_file=ram_file, **kw)
        except (KeyError, TypeError, ConfigError) as e:
            raise SnapshotError(f"the snapshot's machine description is unusable here: {e}") from None
        try:
            if cfg.get("pc"):
                m.add_pc_platform()
            image = cfg.get("image")
            if image and os.path.isfile(image):
                try:  # for symbols only: the guest's bytes are in the snapshot's RAM
                    m.image = open_image(image, mem=m.mem_size, fmt=cfg.get("format") or None)
                except GuestImageError:
                    m.image = None
            if ram_file is not None:
                m.memory.start_dirty_tracking()  # RAM is the snapshot's already
                m.memory.dirty_base = snap
            m.restore(snap)
            if owned:  # no one else can restore it: do not keep it alive
                m.memory.dirty_base = None
        except BaseException:
            m.close()
            raise
        return m

    def _check_stopped(self, what: str) -> None:
        if self._bg is not None and self._bg.is_alive():
            raise MachineStateError(f"cannot {what} while the machine runs; stop() and join() first")

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise MachineClosedError(f"{what}() on a closed Machine: its VM, fds and memory are "
                                     "gone; make a new Machine")

    @property
    def debug(self) -> Debugger:
        """The debug API (:class:`pyvmm.debug.Debugger`): breakpoints, watchpoints, steps,
        registers and guest-virtual memory; what ``pyvmm run --gdb`` serves to gdb."""
        self._check_open("debug")
        if self._debugger is None:
            from pyvmm.debug.debugger import Debugger

            self._debugger = Debugger(self)
        return self._debugger

    def write_core(self, path: str | os.PathLike[str], status: RunStatus | None = None) -> None:
        """Write an ELF core file of the guest as it is now (every vCPU's registers, the
        guest memory the BSP's page tables map): ``gdb guest.elf FILE`` opens it.
        ``status`` (default: how the guest ended) picks the signal the core reports."""
        self._check_open("write_core")
        from pyvmm.debug.core import write_core

        write_core(self, path, status=status or (self._ended.status if self._ended else None))

    def vcpu_loop(self, index: int = 0) -> VcpuLoop:
        """The run loop of vCPU ``index``, for driving one vCPU by hand (benchmarks,
        debuggers) instead of :meth:`run`."""
        self._check_open("vcpu_loop")
        self._runner_for()
        return self.loops[index]

    def stats(self) -> dict[str, dict[str, StatValue]]:
        """A snapshot of the VM's and every vCPU's KVM binary stats (the stats fds are
        opened on first use, so machines driven by hand do not pay for them)."""
        self._check_open("stats")
        if not self._stats:
            self._stats.append(("vm", self.vm.get_stats_fd()))
            self._stats += [(f"vcpu{v.id}", v.get_stats_fd()) for v in self.vcpus]
        return {name: r.read() for name, r in self._stats}

    def _descriptors(self, scope: str) -> Mapping[str, StatDesc]:
        return next((r.descriptors for name, r in self._stats if name == scope), {})

    def run(self, timeout: float | None = None, *, python_loop: bool = False,
            vcpus: Collection[int] | None = None, stats: bool = True) -> RunResult:
        """Run every vCPU (or only those in ``vcpus``) on its own thread until the guest
        stops, crashes or ``timeout`` seconds pass (None: no limit).  Ctrl-C stops the
        vCPUs and returns ``interrupted``.  May be called again to continue after a timeout
        or a stop, not after the guest ended (GuestExitedError).  ``stats=False`` leaves
        ``RunResult.stats`` empty and saves the two snapshots of KVM's statistics.

        ``timeout`` is seconds >= 0 (ValueError for a negative or NaN one; infinity is no
        limit).  MachineClosedError after :meth:`close`; MachineStateError while a
        :meth:`start`-ed run goes on."""
        self._check_open("run")
        timeout = check_timeout(timeout)
        if threading.current_thread() is not self._bg:
            self._check_stopped("run")
        self._check_runnable()
        result = self._runner_for().run(timeout, python_loop, vcpus=vcpus, collect_stats=stats)
        if self._trace is not None:
            for loop in self.loops:
                if loop.trace is not None:
                    self._trace.add(loop.vcpu.id, *loop.trace.drain())
            result.trace = self._trace
        result.kvm_trace = self._kvm_trace
        if result.status in FINAL:
            self._ended = result
        return result

    def _check_runnable(self) -> None:
        if not self._loaded:
            raise GuestImageError("no guest loaded")
        if self._ended is not None:
            raise GuestExitedError(f"the guest has already ended ({self._ended.status}: "
                                   f"{self._ended.message}); make a new Machine to run it again")

    def start(self, timeout: float | None = None, *, python_loop: bool = False) -> None:
        """:meth:`run` on a background thread: follow it with :meth:`wait_event`, end it
        with :meth:`join` (or :meth:`stop` first).  What :meth:`run` would refuse is
        refused here, before the thread starts; an error the run meets on its thread is
        raised by :meth:`join`."""
        self._check_open("start")
        timeout = check_timeout(timeout)
        if self._bg is not None and self._bg.is_alive():
            raise MachineStateError("the machine is already running")
        self._check_runnable()
        self._bg_result = None
        self._bg_error = None
        self.events.skip_to_end()

        def body() -> None:
            try:
                self._bg_result = self.run(timeout, python_loop=python_loop)
            except BaseException as e:  # handed to join(), never a thread traceback
                self._bg_error = e

        self._runner_for()
        self._bg = threading.Thread(target=body, name="pyvmm-run", daemon=True)
        self._bg.start()

    def stop(self) -> None:
        """Ask a running :meth:`run`/:meth:`start` to stop every vCPU now."""
        if self._runner is not None:
            self._runner.stop()

    def join(self, timeout: float | None = None) -> RunResult:
        """Wait for a :meth:`start`-ed run and return its result (or raise what the run
        raised on its thread)."""
        if self._bg is None:
            raise MachineStateError("join() waits for a run started with start(); none was started")
        self._bg.join(check_timeout(timeout))
        if self._bg.is_alive():
            raise TimeoutError("the run is still going; call stop() first")
        if self._bg_error is not None:
            error, self._bg_error = self._bg_error, None
            raise error
        if self._bg_result is None:
            raise MachineStateError("the background run failed before it produced a result")
        return self._bg_result

    # --- teardown --------------------------------------------------------------
    def close(self) -> None:
        """Close every fd and unmap all memory (vCPUs, then the VM, then RAM)."""
        if self._closed:
            return
        self._closed = True
        if self._bg is not None and self._bg.is_alive():
            self.stop()
            self._bg.join()
        if self._runner is not None:
            self._runner.close()
        for _, reader in self._stats:
            reader.close()
        self._stats.clear()
        if hasattr(self, "bus"):
            self.bus.close()  # device threads (the HPET's timers) end while the VM's fd is open
        if hasattr(self, "vm"):
            self.vm.close()  # closes its vCPUs and their kvm_run mappings
        if hasattr(self, "memory"):
            self.memory.close()
        self.kvm.close()
        self.loops = []
        self.vcpus = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
