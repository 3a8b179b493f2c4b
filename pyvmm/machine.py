"""``Machine``: the embedding API, a thin front that owns every fd and mapping it creates
and releases them in :meth:`Machine.close` (or a ``with`` block).  Each service of the
machine is a module beside this one (docs/architecture.md, "Layers"); the methods here
delegate to them and are documented where the work is done."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection

from pyvmm import hardware, launch
from pyvmm.config import IRQCHIP_MODES, check_shape, memory_size
from pyvmm.devices.base import Device
from pyvmm.devices.fastpath import Space
from pyvmm.devices.handler import PortHandler, ReadFn, WriteFn
from pyvmm.devices.msr import MsrRead, MsrWrite
from pyvmm.devices.ucall import GuestEvent, SyncHandler
from pyvmm.events import EventHub, stop_at_sync
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.loader import LoadPlan, open_image, plan_for
from pyvmm.loader.symbols import Symbols
from pyvmm.memory import MemoryRegion
from pyvmm.runs import Runs
from pyvmm.statistics import MachineStats
from pyvmm.tracing import Tracing
from pyvmm.vstate.history import HistoryLimits
from pyvmm.vstate.loop import VcpuLoop
from pyvmm.vstate.result import RunResult, RunStatus
from pyvmm.vstate.runner import Runner
from pyvmm.x86.entry import EntryState, apply_entry

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:  # (snapshots load on use: a plain run never imports them)
    from typing import Any, Self

    from pyvmm.debug.debugger import Debugger, HostDebug
    from pyvmm.kvm.stats import StatValue
    from pyvmm.kvmtrace import KvmTrace
    from pyvmm.loader import GuestImage
    from pyvmm.platform.pc import PcPlatform
    from pyvmm.snapshot import Snapshot
    from pyvmm.vstate.trace import ExitTrace

StrPath = str | os.PathLike[str]
__all__ = ["IRQCHIP_MODES", "HistoryLimits", "Machine", "RunResult", "RunStatus"]

#: what a machine keeps of its runs unless told (frozen, so every machine shares it)
_DEFAULT_HISTORY = HistoryLimits()


class Machine:
    """A VM with ``mem`` of RAM (bytes, or a size string such as ``"64M"``), ``cpus`` vCPUs,
    an interrupt controller (``irqchip``), a 16550 at 0x3f8, debug-exit at 0xf4, the POST
    port 0x80 and the test protocol's port 0x1000.  ``cpu_features`` (``"+x2apic,-pcid"``)
    adds or hides CPUID bits, as QEMU's ``-cpu MODEL,+flag,-flag``.  ``serial`` receives
    guest output as it comes; ``history`` bounds what the API keeps of it and of events.

    Below the API: ``mem_size`` (bytes), ``memory`` (:class:`pyvmm.memory.GuestMemory`),
    ``vcpus`` (:class:`pyvmm.kvm.vcpu.Vcpu`, BSP first), ``symbols``, ``vm``, ``kvm``, ``bus``,
    ``pc``, ``image``, ``plan``, ``serial``, ``events``; misuse: :mod:`pyvmm.lifecycle`.
    """

    def __init__(self, *, mem: int | str = "64M", cpus: int = 1, strict_io: bool = False,
                 kvm_path: str | None = None, serial: Callable[[bytes], None] | None = None,
                 cmdline: str = "", irqchip: str = "kernel", pit: bool = False,
                 history: HistoryLimits | None = None, cpu_features: str = "",
                 ram_file: tuple[int, list[int]] | None = None) -> None:
        self.mem_size = memory_size(mem)
        check_shape(cpus, irqchip, pit)
        self.cpus, self.irqchip, self.pit = cpus, irqchip, pit
        self.cmdline, self.cpu_features = cmdline, cpu_features
        self._hub = EventHub(history or _DEFAULT_HISTORY, serial)  # (pytest_plugin trims its listeners)
        self.serial, self.events = self._hub.serial, self._hub.events
        self.image: GuestImage | None = None
        self.plan: LoadPlan | None = None
        self.pc: PcPlatform | None = None
        self.vcpus: list[Vcpu] = []
        self._reset_lapics: list[bytes | None] = []
        self._stats = MachineStats()
        self._debugger: Debugger | None = None
        #: the host's debug support for :attr:`debug` (the CLI's: pyvmm.doctor.host_debug)
        self.host_debug: HostDebug | None = None
        self._tracing = Tracing()
        self._runs = Runs(self.events, self._tracing, self._new_runner)
        self._life = self._runs.life
        self.kvm = Kvm(kvm_path)
        try:
            (self.vm, self.memory, self.bus, self.msrs, self.uart, self.debug_exit, self.post,
             self.ucall, self.vcpus, self._reset_lapics) = hardware.build(
                self.kvm, cpus=cpus, irqchip=irqchip, pit=pit, mem_size=self.mem_size,
                cpu_features=cpu_features, ram_file=ram_file, strict_io=strict_io,
                serial=self.serial.write, symbols=lambda: self.symbols, emit=self._hub.emit,
                fast_change=self._runs.sync_fast)
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_file(cls, path: StrPath, *, fmt: str | None = None, cmdline: str = "",
                  initrd: StrPath | None = None, **kw: Any) -> Machine:
        """A machine with the guest at ``path`` loaded (:func:`pyvmm.launch.from_file`)."""
        return launch.from_file(cls, path, fmt, cmdline, initrd, **kw)

    @classmethod
    def from_elf(cls, path: StrPath, **kw: Any) -> Machine:
        """:meth:`from_file` for an ELF64 guest (pyvmm's entry convention)."""
        return cls.from_file(path, fmt="elf64", **kw)

    @classmethod
    def from_multiboot(cls, path: StrPath, **kw: Any) -> Machine:
        """:meth:`from_file` for a multiboot kernel, as QEMU's ``-kernel`` boots it."""
        return cls.from_file(path, fmt="multiboot", **kw)

    def plan_for(self, image: GuestImage, *, cmdline: str = "", initrd: StrPath | None = None) -> LoadPlan:
        """Lay ``image`` out against this machine's RAM (:func:`pyvmm.loader.plan_for`)."""
        return plan_for(image, self.memory.ram_ranges(), self.cpus, self.mem_size, cmdline, initrd)

    def load(self, plan: LoadPlan, image: GuestImage | None = None) -> None:
        """Apply a loader's plan: its bytes to RAM, its entry state to the BSP."""
        self._life.check_open("load")
        launch.apply_plan(self.memory, self.vcpus[0], plan)
        self.plan, self._life.loaded, self.cmdline = plan, True, plan.cmdline
        self.image = image if image is not None else self.image

    def load_file(self, path: StrPath, *, fmt: str | None = None, cmdline: str = "",
                  initrd: StrPath | None = None) -> GuestImage:
        """Read, plan and load a guest into this (already built) machine."""
        self._life.check_open("load_file")
        image = open_image(path, mem=self.mem_size, fmt=fmt)
        self.load(self.plan_for(image, cmdline=cmdline, initrd=initrd), image)
        return image

    def enter_real_mode(self, address: int) -> None:
        """Start the BSP in real mode at ``address`` (below 1 MiB, 16-byte aligned)."""
        self._life.check_open("enter_real_mode")
        apply_entry(self.vcpus[0], EntryState.real_mode(address))

    @property
    def symbols(self) -> Symbols | None:
        """The loaded guest's symbol table (``address_of(name)``, ``lookup(addr)``)."""
        return self.image.symbols if self.image is not None else None

    def add_device(self, space: Space, base: int, length: int, device: Device) -> None:
        """``device`` at ``base`` (it gets offsets into the range); its fast entries reach the loops."""
        self._life.check_open("add_device")
        self._runs.add_fast_entries(self.bus.register(space, base, length, device))

    def add_handler(self, space: Space, base: int, length: int, *, name: str = "handler",
                    read: ReadFn | None = None, write: WriteFn | None = None) -> None:
        """Python ``read(addr, size)``/``write(addr, size, value)`` (absolute ``addr``)."""
        self.add_device(space, base, length, PortHandler(name, read, write, base))

    def add_pc_platform(self) -> PcPlatform:
        """The PC devices and firmware state QEMU's ``-kernel`` guests expect."""
        self._life.check_open("add_pc_platform")
        self.pc = self.pc or hardware.pc_platform(self)
        return self.pc

    def add_msr_handler(self, index: int, *, read: MsrRead | None = None,
                        write: MsrWrite | None = None) -> None:
        """Guest RDMSR/WRMSR of ``index`` to Python (:class:`pyvmm.devices.msr.MsrHandlers`)."""
        self._life.check_open("add_msr_handler")
        self.msrs.attach(self.vm, index, read, write)

    def add_ram(self, gpa: int, size: int, **kw: Any) -> MemoryRegion:
        """Another memslot (``readonly=True`` for ROM, ``log_dirty=True`` for dirty logging)."""
        self._life.check_open("add_ram")
        return self.memory.add_ram(gpa, size, **kw)

    def on_sync(self, handler: SyncHandler) -> None:
        """Call ``handler(event)`` at every GUEST_SYNC, on the vCPU's thread, while it waits."""
        self.ucall.sync_handlers.append(handler)

    def run_to_sync(self, stage: int, timeout: float | None = None, *,
                    python_loop: bool = False) -> RunResult:
        """:meth:`run` until the first GUEST_SYNC of ``stage``, every vCPU stopped there."""
        with stop_at_sync(self.ucall, stage, self.stop):
            return self.run(timeout, python_loop=python_loop)

    def on_event(self, handler: Callable[[GuestEvent], None]) -> None:
        """Call ``handler(event)`` for every guest event (vCPU's thread, before sync handlers)."""
        self._hub.listeners.append(handler)

    def next_event(self, timeout: float | None = None) -> GuestEvent | None:
        """The next guest event of a :meth:`start`-ed run (:mod:`pyvmm.background`)."""
        return self._runs.next_event(timeout)

    def wait_event(self, kind: str | None = None, stage: int | None = None, timeout: float | None = None
                   ) -> GuestEvent | None:
        """The next guest event of ``kind`` (and sync ``stage``) of a :meth:`start`-ed run."""
        return self._runs.bg.wait_event(kind, stage, timeout)

    def enable_trace(self, capacity: int | None = None, *, events: int | None = None) -> ExitTrace:
        """Record every exit from now on (:class:`pyvmm.tracing.Tracing`)."""
        return self._runs.enable_trace(self.on_event, capacity, events)

    def kvm_trace(self, events: str | Collection[str] | None = None, *,
                  stacks: bool | str | Collection[str] = False, **kw: Any) -> KvmTrace:
        """KVM's own events while this machine runs, in every later result (needs tracefs)."""
        self._life.check_open("kvm_trace")
        return self._tracing.kvm(self, events, stacks=stacks, **kw)

    def snapshot(self) -> Snapshot:
        """Everything the guest can observe, now (:func:`pyvmm.snapshot.take`)."""
        from pyvmm import snapshot as snapshots
        self._life.check_stopped("snapshot")
        return snapshots.take(self)

    def save_snapshot(self, path: StrPath) -> None:
        """:meth:`snapshot` streamed to ``path`` (:func:`pyvmm.snapshot.save_machine`)."""
        from pyvmm import snapshot as snapshots
        self._life.check_stopped("snapshot", "save_snapshot")
        snapshots.save_machine(self, path)

    def restore(self, snap: Snapshot) -> int:
        """Back to ``snap`` (:func:`pyvmm.snapshot.restore`); the RAM pages copied."""
        from pyvmm import snapshot as snapshots
        snap = snapshots.checked(snap)
        self._life.check_stopped("restore")
        pages = snapshots.restore(self, snap)
        self._runs.restored(self.bus.fast_entries)  # (and the debugger forgets its stops)
        return pages

    @classmethod
    def from_snapshot(cls, source: StrPath | Snapshot, **kw: Any) -> Machine:
        """A machine that goes on from a snapshot (:func:`pyvmm.snapshot.clone`)."""
        from pyvmm import snapshot as snapshots
        return snapshots.clone(cls, source, **kw)

    @property
    def debug(self) -> Debugger:
        """The debug API (:class:`pyvmm.debug.Debugger`), what ``pyvmm run --gdb`` serves."""
        self._life.check_open("debug")
        if self._debugger is None:
            from pyvmm.debug.debugger import Debugger
            self._debugger = Debugger(self, host=self.host_debug)
            self._runs.on_restore.append(self._debugger.reset)
        return self._debugger

    def write_core(self, path: StrPath, status: RunStatus | None = None) -> None:
        """An ELF core of the guest now (:func:`pyvmm.debug.core.write_core`)."""
        self._life.check_open("write_core")
        from pyvmm.debug.core import write_core
        write_core(self, path, status=status or self._life.ended_status())

    def stats(self) -> dict[str, dict[str, StatValue]]:
        """The VM's and every vCPU's KVM binary stats now (:mod:`pyvmm.statistics`)."""
        self._life.check_open("stats")
        return self._stats.read(self.vm, self.vcpus)

    def _new_runner(self) -> Runner:
        return Runner([VcpuLoop(v, self.bus, self.msrs) for v in self.vcpus], self.bus, self.memory,
                      lambda: self.symbols, self.serial, self.events, self.stats,
                      self._stats.descriptors, lambda left, stop: hardware.sleep_s3(
                          self.pc, self.vcpus, self._reset_lapics, left, stop))

    @property
    def loops(self) -> list[VcpuLoop]:
        """One run loop per vCPU, BSP first, made on first use (:mod:`pyvmm.runs`)."""
        return self._runs.loops

    def vcpu_loop(self, index: int = 0) -> VcpuLoop:
        """The run loop of vCPU ``index``, to drive one vCPU by hand instead of :meth:`run`."""
        self._life.check_open("vcpu_loop")
        return self._runs.runner().loops[index]

    def run(self, timeout: float | None = None, *, python_loop: bool = False,
            vcpus: Collection[int] | None = None, stats: bool = True) -> RunResult:
        """Run every vCPU (or those in ``vcpus``) until the guest ends or ``timeout`` seconds
        pass (:class:`pyvmm.vstate.runner.Runner`); again after a timeout or stop, never after
        the guest ended (GuestExitedError).  ``stats=False`` skips KVM's statistics."""
        return self._runs.run(timeout, python_loop, vcpus, stats)

    def start(self, timeout: float | None = None, *, python_loop: bool = False) -> None:
        """:meth:`run` on a thread (:mod:`pyvmm.background`); refused as :meth:`run` would be."""
        self._runs.start(timeout, python_loop)

    def stop(self) -> None:
        """Ask a running :meth:`run`/:meth:`start` to stop every vCPU now."""
        self._runs.stop()

    def join(self, timeout: float | None = None) -> RunResult:
        """The result of a :meth:`start`-ed run (or what it raised on its thread)."""
        return self._runs.bg.join(timeout)

    def close(self) -> None:
        """Close every fd and unmap all memory (vCPUs, then the VM, then RAM)."""
        if not self._life.closed:
            self._life.closed = True
            self._runs.close()
            self._stats.close()
            hardware.close(getattr(self, "bus", None), getattr(self, "vm", None),
                           getattr(self, "memory", None), self.kvm)
            self.vcpus = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
