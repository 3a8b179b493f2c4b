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

import os
from collections.abc import Callable, Collection, Mapping
from typing import TYPE_CHECKING, Any, Self

from pyvmm import hardware
from pyvmm import snapshot as snapshots
from pyvmm.background import BackgroundRun

# re-exported where they were before pyvmm.config, devices.handler and pyvmm.snapshot
from pyvmm.config import IRQCHIP_MODES as IRQCHIP_MODES
from pyvmm.config import MAX_CPUS as MAX_CPUS
from pyvmm.config import MULTIBOOT_MEM as MULTIBOOT_MEM
from pyvmm.config import check_shape
from pyvmm.config import check_timeout as check_timeout
from pyvmm.config import memory_size as memory_size
from pyvmm.devices.base import Device
from pyvmm.devices.bus import Bus
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.fastpath import FastEntry, Space
from pyvmm.devices.handler import PortHandler as PortHandler
from pyvmm.devices.msr import MsrHandlers, MsrRead, MsrWrite
from pyvmm.devices.post import PostPort
from pyvmm.devices.uart import Uart16550
from pyvmm.devices.ucall import GuestEvent, SyncHandler, UcallDevice
from pyvmm.errors import GuestExitedError, GuestImageError, MachineClosedError, MachineStateError
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.kvm.vm import Vm
from pyvmm.loader import LoadPlan, open_image, plan_for
from pyvmm.loader.symbols import Symbols
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.snapshot import Snapshot
from pyvmm.snapshot import SnapshotError as SnapshotError
from pyvmm.tracing import Tracing
from pyvmm.vstate.history import EventLog, HistoryLimits, SerialLog
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import FINAL, Outcome, RunResult, RunStatus
from pyvmm.vstate.runner import Runner
from pyvmm.x86.entry import EntryState, apply_entry

if TYPE_CHECKING:
    import threading

    from pyvmm.debug.debugger import Debugger, HostDebug
    from pyvmm.kvm.stats import StatDesc, StatsReader, StatValue
    from pyvmm.loader import GuestImage
    from pyvmm.platform.pc import PcPlatform
    from pyvmm.vstate.trace import ExitTrace

__all__ = ["IRQCHIP_MODES", "HistoryLimits", "Machine", "RunResult", "RunStatus"]


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
        check_shape(cpus, irqchip, pit)
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
        #: what the host's debug support offers, handed to :attr:`debug` when it is made
        #: (``pyvmm.doctor.host_debug``); None: breakpoints in debug registers, write
        #: watchpoints emulated by stepping
        self.host_debug: HostDebug | None = None
        self._tracing = Tracing()
        self._loaded = False
        self._bg = BackgroundRun(self.events)
        self._ended: RunResult | None = None
        self._closed = False
        self.kvm = Kvm(kvm_path)
        try:
            self._build(strict_io, ram_file)
        except BaseException:
            self.close()
            raise

    def _build(self, strict_io: bool, ram_file: tuple[int, list[int]] | None) -> None:
        self.vm = hardware.create_vm(self.kvm, self.cpus, self.irqchip, self.pit)
        self.memory = GuestMemory(self.vm)
        hardware.add_guest_ram(self.memory, self.mem_size, ram_file)
        self.bus = Bus(strict=strict_io)
        self.msrs = MsrHandlers()
        self.uart = Uart16550(self.serial.write)
        self.uart.on_fast_change = self._sync_fast
        self.debug_exit = DebugExit()
        self.post = PostPort()
        self.ucall = UcallDevice(self.memory, lambda: self.symbols, self._emit)
        for dev in (self.uart, self.debug_exit, self.post, self.ucall):
            self.bus.attach(dev)
        self._reset_lapics = hardware.create_vcpus(self.kvm, self.vm, self.cpus, self.irqchip,
                                                   self.cpu_features, self.vcpus)

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
        return plan_for(image, self.memory.ram_ranges(), self.cpus, self.mem_size, cmdline, initrd)

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
        return self._bg.next_event(timeout)

    def wait_event(self, kind: str | None = None, stage: int | None = None,
                   timeout: float | None = None) -> GuestEvent | None:
        """The next guest event of ``kind`` (and sync ``stage``), or None after ``timeout``
        seconds or when the run ended without one; events that do not match are skipped
        (they stay in the history).  As :meth:`next_event`, it needs a :meth:`start`-ed run."""
        return self._bg.wait_event(kind, stage, timeout)

    # --- running ---------------------------------------------------------------
    def _runner_for(self) -> Runner:
        if self._runner is None:
            self.loops = [VcpuLoop(v, self.bus, self.msrs) for v in self.vcpus]
            self._runner = Runner(self.loops, self.bus, self.memory, lambda: self.symbols,
                                  self.serial, self.events, self.stats, self._descriptors,
                                  self._sleep_s3)
        return self._runner

    def _sleep_s3(self, left: float | None, stop: threading.Event) -> bool | Outcome:
        if self.pc is None:  # no chipset to wake the guest: asleep for good
            stop.wait(left)
            return False
        return self.pc.sleep_s3(self.vcpus, self._reset_lapics, left, stop)

    def enable_trace(self, capacity: int | None = None, *, events: int | None = None
                     ) -> ExitTrace:
        """Record every exit from now on (the C loop keeps the newest ``capacity`` per
        vCPU, a power of two, between runs and across them; default 65536) and the newest
        ``events`` guest events (default 65536; older ones are counted:
        ``ExitTrace.dropped_events``); each run's result carries the trace so far
        (``RunResult.trace``)."""
        self._check_open("enable_trace")
        self._runner_for()
        return self._tracing.enable(self.loops, self.on_event, capacity, events)

    # --- snapshots (pyvmm.snapshot) ---------------------------------------------
    def snapshot(self) -> Snapshot:
        """Everything the guest can observe, now (the machine must be stopped: between
        runs, not from a sync handler).  From here on RAM writes are tracked, so that
        :meth:`restore` of this snapshot copies back only the pages written since."""
        self._check_open("snapshot")
        self._check_stopped("snapshot")
        return snapshots.take(self)

    def save_snapshot(self, path: str | os.PathLike[str]) -> None:
        """:meth:`snapshot` written straight to ``path`` (as :meth:`Snapshot.save`), RAM
        streamed from the guest's own memory: no in-memory copy of guest RAM."""
        self._check_open("save_snapshot")
        self._check_stopped("snapshot")
        snapshots.save_machine(self, path)

    def restore(self, snap: Snapshot) -> int:
        """Put the machine back as it was at ``snap`` (taken from this machine, or one of
        the same shape); returns how many RAM pages were copied.  A guest that had ended
        can run again.  ``snap`` is a :class:`~pyvmm.snapshot.Snapshot` (TypeError for
        anything else): for a file, ``restore(pyvmm.snapshot.load(path))``, or a new
        machine with :meth:`from_snapshot`."""
        snap = snapshots.checked(snap)
        self._check_open("restore")
        self._check_stopped("restore")
        try:
            pages = snapshots.restore(self, snap)
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
        return snapshots.clone(cls, source, **kw)

    def _check_stopped(self, what: str) -> None:
        if self._bg.running():
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

            self._debugger = Debugger(self, host=self.host_debug)
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
        if not self._bg.on_thread():
            self._check_stopped("run")
        self._check_runnable()
        result = self._runner_for().run(timeout, python_loop, vcpus=vcpus, collect_stats=stats)
        self._tracing.collect(self.loops, result)
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
        if self._bg.running():
            raise MachineStateError("the machine is already running")
        self._check_runnable()
        self._runner_for()
        self._bg.start(lambda: self.run(timeout, python_loop=python_loop))

    def stop(self) -> None:
        """Ask a running :meth:`run`/:meth:`start` to stop every vCPU now."""
        if self._runner is not None:
            self._runner.stop()

    def join(self, timeout: float | None = None) -> RunResult:
        """Wait for a :meth:`start`-ed run and return its result (or raise what the run
        raised on its thread)."""
        return self._bg.join(timeout)

    # --- teardown --------------------------------------------------------------
    def close(self) -> None:
        """Close every fd and unmap all memory (vCPUs, then the VM, then RAM)."""
        if self._closed:
            return
        self._closed = True
        self._bg.close(self.stop)
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
