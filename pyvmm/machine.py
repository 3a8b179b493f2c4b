"""``Machine``: memory + vCPUs + devices + loader -> ``run()`` -> ``RunResult``.

This is the embedding API.  A machine owns every fd and mapping it creates and releases
them in :meth:`Machine.close` (or at the end of a ``with`` block)::

    with Machine(mem="64M", cpus=1) as m:
        m.load_elf("guests/build/hello.elf")
        result = m.run(timeout=10)
    print(result.exit_code, result.serial)
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from pyvmm._native import ffi, lib
from pyvmm.crash import GuestCrash, capture
from pyvmm.devices.bus import Bus, Device, Space, all_ones
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.post import PostPort
from pyvmm.devices.uart import Uart16550
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.stats import StatsReader, StatValue, delta
from pyvmm.kvm.system import Kvm
from pyvmm.kvm.vcpu import Vcpu
from pyvmm.loader.boot import plan_boot
from pyvmm.loader.elf import ElfImage, GuestImageError, load_elf64
from pyvmm.memory import GuestMemory, MemoryRegion
from pyvmm.runloop import Outcome, VcpuLoop
from pyvmm.ucall import UCALL_PORT, GuestEvent, SyncHandler, UcallDevice
from pyvmm.x86 import layout
from pyvmm.x86.cpuid import vcpu_cpuid
from pyvmm.x86.modes import set_long_mode, set_protected_mode, set_real_mode
from pyvmm.x86.msrs import RESET_MSRS

if TYPE_CHECKING:
    from pyvmm.loader.multiboot import Module, MultibootImage
from pyvmm.x86.segments import gdt_bytes

#: "kernel": KVM_CREATE_IRQCHIP (PIC, IOAPIC and LAPICs in KVM); "split": only the LAPICs in
#: KVM (KVM_CAP_SPLIT_IRQCHIP; IOAPIC/PIC accesses exit); "none": no interrupt controller.
IRQCHIP_MODES = ("kernel", "split", "none")
#: the flat GDT for multiboot entry, in the multiboot info area's spare space
MB_GDT_OFFSET = 0x380
SPLIT_IRQCHIP_PINS = 24
APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
LVT_EXTINT = 0x700
LVT_NMI = 0x400


@dataclass
class RunResult:
    """What a run produced.

    ``status``: ``exit`` (the guest wrote the debug-exit port; ``exit_code`` is the value),
    ``done`` (GUEST_DONE), ``stopped`` (:meth:`Machine.stop`), ``assert`` (GUEST_ASSERT
    failed or an unhandled guest exception: see ``assertion``), ``shutdown``, ``timeout``,
    ``crash`` (see ``crash``), ``io-error``, ``interrupted``, ``error`` (KVM or the VMM
    failed; ``message`` says why).
    """

    status: str
    exit_code: int | None
    serial: bytes
    message: str = ""
    exit_counts: dict[str, int] = field(default_factory=dict)
    vcpu_exit_counts: list[dict[str, int]] = field(default_factory=list)
    fast_hits: dict[str, int] = field(default_factory=dict)
    kvm_runs: int = 0
    stats: dict[str, dict[str, StatValue]] = field(default_factory=dict)
    crash: GuestCrash | None = None
    unclaimed: list[str] = field(default_factory=list)
    duration: float = 0.0
    outcomes: list[Outcome] = field(default_factory=list)
    events: list[GuestEvent] = field(default_factory=list)
    assertion: GuestEvent | None = None

    @property
    def ok(self) -> bool:
        """The guest exited with status 0 or said GUEST_DONE."""
        return (self.status == "exit" and self.exit_code == 0) or self.status == "done"

    def syncs(self, stage: int | None = None) -> list[GuestEvent]:
        """The GUEST_SYNC events, optionally only those of one stage."""
        return [e for e in self.events if e.kind == "sync" and (stage is None or e.stage == stage)]

    @property
    def prints(self) -> list[str]:
        return [e.text for e in self.events if e.kind == "print"]

    @property
    def text(self) -> str:
        return self.serial.decode("utf-8", "replace")


class PortHandler:
    """Adapts two callables to the :class:`Device` protocol for :meth:`Machine.add_handler`."""

    def __init__(self, name: str, read: Callable[[int, int], int] | None,
                 write: Callable[[int, int, int], None] | None) -> None:
        self.name = name
        self._read = read
        self._write = write

    def read(self, addr: int, size: int) -> int:
        return self._read(addr, size) if self._read else all_ones(size)

    def write(self, addr: int, size: int, value: int) -> None:
        if self._write:
            self._write(addr, size, value)


class Machine:
    """A VM with ``mem`` bytes of RAM, ``cpus`` vCPUs, the in-kernel irqchip, a 16550 at
    0x3f8, debug-exit at 0xf4 and the POST port 0x80."""

    def __init__(self, *, mem: int | str = "64M", cpus: int = 1, strict_io: bool = False,
                 kvm_path: str | None = None, serial: Callable[[bytes], None] | None = None,
                 cmdline: str = "", irqchip: str = "kernel", pit: bool = False) -> None:
        self.mem_size = layout.parse_size(mem) if isinstance(mem, str) else int(mem)
        if self.mem_size % 4096:
            raise ValueError("memory size must be a multiple of 4 KiB")
        self.cpus = cpus
        self.cmdline = cmdline
        if irqchip not in IRQCHIP_MODES:
            raise ValueError(f"irqchip must be one of {', '.join(IRQCHIP_MODES)}, not {irqchip!r}")
        self.irqchip = irqchip
        if pit and irqchip != "kernel":
            raise ValueError("the in-kernel PIT needs the in-kernel irqchip (irqchip='kernel')")
        self.pit = pit
        self._serial = bytearray()
        self._serial_sink = serial
        self.image: ElfImage | None = None
        self.vcpus: list[Vcpu] = []
        self.loops: list[VcpuLoop] = []
        self._stats: list[tuple[str, StatsReader]] = []
        self.kvm: Kvm | None = None
        self.vm = None
        self._runner: threading.Thread | None = None
        self._bg_result: RunResult | None = None
        self._done: threading.Event | None = None
        self._stopped_by_host = False
        self.memory: GuestMemory | None = None
        try:
            self._build(kvm_path, strict_io)
        except BaseException:
            self.close()
            raise

    # --- construction ----------------------------------------------------------
    def _build(self, kvm_path: str | None, strict_io: bool) -> None:
        if not 1 <= self.cpus <= 64:
            raise ValueError(f"--cpus must be 1..64, not {self.cpus}")
        self.kvm = Kvm(kvm_path)
        max_vcpus = self.kvm.check_extension(lib.KVM_CAP_MAX_VCPUS) or 1
        if self.cpus > max_vcpus:
            raise KvmError("KVM_CREATE_VCPU", 22, f"this KVM allows {max_vcpus} vCPUs")
        self.vm = self.kvm.create_vm()
        if self.kvm.check_extension(lib.KVM_CAP_SET_TSS_ADDR):
            self.vm.set_tss_addr(layout.TSS_ADDR)
        if self.kvm.check_extension(lib.KVM_CAP_SET_IDENTITY_MAP_ADDR):
            self.vm.set_identity_map_addr(layout.IDENTITY_MAP_ADDR)
        if self.irqchip == "kernel":
            # before the memslots: on kvm_pvm a memslot added to a VM that has an in-kernel
            # PIC/IOAPIC waits for an SRCU grace period (~6 ms); this order pays it once, at
            # creation, instead of ~15 ms at destruction
            self.vm.create_irqchip()
            if self.pit:
                self.vm.create_pit2(lib.KVM_PIT_SPEAKER_DUMMY)  # port 0x61 handled in KVM
        elif self.irqchip == "split":
            self.vm.enable_cap(lib.KVM_CAP_SPLIT_IRQCHIP, SPLIT_IRQCHIP_PINS)
        elif self.cpus > 1:
            raise ValueError("more than one vCPU needs an irqchip (INIT/SIPI go through the LAPIC)")
        self.memory = GuestMemory(self.vm)
        for gpa, size in layout.ram_ranges(self.mem_size):
            self.memory.add_ram(gpa, size, name="ram" if gpa == 0 else "ram-high")
        self.bus = Bus(strict=strict_io)
        self.uart = Uart16550(self._serial_out)
        self.uart.on_fast_change = self._sync_fast
        self.debug_exit = DebugExit()
        self.post = PostPort()
        self.events: list[GuestEvent] = []
        self.event_queue: queue.Queue[GuestEvent] = queue.Queue()
        self.ucall = UcallDevice(self.memory, lambda: self.image.symbols if self.image else None,
                                 self._emit)
        for dev, port, n in ((self.uart, 0x3F8, 8), (self.debug_exit, 0xF4, 4), (self.post, 0x80, 1),
                             (self.ucall, UCALL_PORT, 4)):
            self.bus.register(Space.PIO, port, n, dev)
        supported = self.kvm.get_supported_cpuid()
        for i in range(self.cpus):
            vcpu = self.vm.create_vcpu(i)
            self.vcpus.append(vcpu)
            self._reset_vcpu(vcpu, supported)

    def _reset_vcpu(self, vcpu: Vcpu, supported: list[dict[str, int]]) -> None:
        vcpu.set_cpuid2(vcpu_cpuid(supported, vcpu.id, self.cpus))
        vcpu.set_msrs(RESET_MSRS)
        fpu = ffi.new("struct kvm_fpu *", {"fcw": 0x37F, "mxcsr": 0x1F80})  # x87/SSE reset state
        vcpu.set_fpu(fpu)
        if self.irqchip != "none":
            lapic = vcpu.get_lapic()  # virtual-wire mode, as firmware leaves it
            lapic[APIC_LVT_LINT0:APIC_LVT_LINT0 + 4] = LVT_EXTINT.to_bytes(4, "little")
            lapic[APIC_LVT_LINT1:APIC_LVT_LINT1 + 4] = LVT_NMI.to_bytes(4, "little")
            vcpu.set_lapic(bytes(lapic))
        # GPRs and RIP in kvm_run on every exit for free; sregs/events too would cost
        # ~0.3 us per exit here (measured), so those are read by ioctl when needed
        vcpu.enable_sync_regs(lib.KVM_SYNC_X86_REGS)

    @classmethod
    def from_elf(cls, path: str | Path, *, cmdline: str = "", **kw: Any) -> Machine:
        """Parse the guest first (so a bad file costs no VM), then build and load."""
        image = load_elf64(path)
        m = cls(cmdline=cmdline, **kw)
        try:
            m.load(image)
        except BaseException:
            m.close()
            raise
        return m

    # --- devices and memory ----------------------------------------------------
    def add_device(self, space: Space, base: int, length: int, device: Device) -> None:
        """Put ``device`` on the bus; its fast entries (if any) reach every vCPU's table."""
        before = len(self.bus.fast_entries)
        self.bus.register(space, base, length, device)
        for loop in self.loops:
            for fe in self.bus.fast_entries[before:]:
                loop.add_fast_entry(fe)
            loop.sync_claims()

    def add_handler(self, space: Space, base: int, length: int, *,
                    read: Callable[[int, int], int] | None = None,
                    write: Callable[[int, int, int], None] | None = None,
                    name: str = "handler") -> None:
        """A Python handler for a port or MMIO range: ``read(addr, size) -> int`` and
        ``write(addr, size, value)``; ``addr`` is absolute.  Called on the vCPU's thread."""
        self.add_device(space, base, length, PortHandler(name, read, write))

    def add_msr_handler(self, index: int, *, read: Callable[[], int] | None = None,
                        write: Callable[[int], None] | None = None) -> None:
        """Send guest RDMSR/WRMSR of ``index`` to Python: KVM's MSR filter denies the MSR
        and KVM_CAP_X86_USER_SPACE_MSR turns the denial into a KVM_EXIT_X86_RDMSR/WRMSR.
        A direction with no handler gives the guest #GP."""
        assert self.vm is not None
        if not self.bus.msr_handlers:
            self.vm.enable_cap(lib.KVM_CAP_X86_USER_SPACE_MSR, lib.KVM_MSR_EXIT_REASON_FILTER)
        self.bus.msr_handlers[index] = (read, write)
        ranges = [(i, 1, lib.KVM_MSR_FILTER_READ | lib.KVM_MSR_FILTER_WRITE, b"\0")
                  for i in sorted(self.bus.msr_handlers)]
        self.vm.set_msr_filter(ranges)

    def add_ram(self, gpa: int, size: int, **kw: Any) -> MemoryRegion:
        """Another memslot (``readonly=True`` for ROM, ``log_dirty=True`` for dirty logging)."""
        assert self.memory is not None
        return self.memory.add_ram(gpa, size, **kw)

    def on_sync(self, handler: SyncHandler) -> None:
        """Call ``handler(event)`` at every GUEST_SYNC, on the vCPU's thread, while that vCPU
        waits: the place to inspect or change the VM at a known point of the guest."""
        self.ucall.sync_handlers.append(handler)

    def next_event(self, timeout: float | None = None) -> GuestEvent | None:
        """The next guest event (for a run started with :meth:`start`), or None on timeout."""
        try:
            return self.event_queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _emit(self, event: GuestEvent) -> None:
        self.events.append(event)
        self.event_queue.put(event)
        if event.kind == "print":
            self._serial_out(event.text.encode() + (b"" if event.text.endswith("\n") else b"\n"))

    def _sync_fast(self, fe: Any) -> None:
        for loop in self.loops:
            loop.sync_fast_entry(fe)

    def _serial_out(self, data: bytes) -> None:
        self._serial += data
        if self._serial_sink is not None:
            self._serial_sink(data)

    # --- loading ---------------------------------------------------------------
    def load_elf(self, path: str | Path, cmdline: str | None = None) -> ElfImage:
        image = load_elf64(path)
        self.load(image, cmdline)
        return image

    def load(self, image: ElfImage, cmdline: str | None = None) -> None:
        """Copy the segments to RAM, build the boot structures, set the BSP's entry state."""
        assert self.memory is not None
        if cmdline is not None:
            self.cmdline = cmdline
        ram = [(r.gpa, r.size) for r in self.memory.regions if not r.readonly]
        plan = plan_boot(ram, image.segments, self.cmdline.encode(), self.cpus, image.path)
        for seg in image.segments:
            self.memory.write(seg.paddr, seg.data)
        for gpa, data in plan.writes:
            self.memory.write(gpa, data)
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        set_long_mode(sregs, cr3=plan.cr3, gdt_base=plan.gdt_addr)
        bsp.set_sregs(sregs)
        # every other GPR is 0; RFLAGS bit 1 is reserved-set, IF stays 0
        bsp.set_regs(ffi.new("struct kvm_regs *", {"rip": image.entry, "rsp": plan.stack_top,
                                                   "rdi": plan.info_addr, "rflags": 0x2}))
        self.image = image
        self.boot_plan = plan

    def add_pc_platform(self) -> None:
        """What QEMU's PC gives a ``-kernel`` guest, without firmware: fw_cfg, pc-testdev,
        the Bochs shutdown port, PCI configuration mechanism #1 (no devices), the ACPI PM
        timer and tables (RSDP/RSDT/FADT/MADT), RTC/CMOS, an IVT of IRETs and the PICs
        initialised as a BIOS leaves them.  The PIT comes with ``Machine(pit=True)``."""
        # imported here: ELF64 guests never need the PC platform, and start-up time counts
        from pyvmm.devices.fw_cfg import FW_CFG_PORT_SEL, FwCfg
        from pyvmm.devices.legacy import (
            BOCHS_SHUTDOWN_PORT,
            PCI_CONFIG_ADDRESS,
            PM_BASE,
            AcpiPm,
            BochsShutdown,
            PciConfigMech1,
        )
        from pyvmm.devices.pc_testdev import (
            FLUSH_PORT,
            IOMEM_BASE,
            IOMEM_LEN,
            IRQ_LINES,
            IRQ_PORT,
            SCRATCH_PORT,
            PcTestFlush,
            PcTestIomem,
            PcTestIrq,
            PcTestScratch,
        )
        from pyvmm.devices.rtc import Rtc
        from pyvmm.firmware import acpi, bios

        assert self.memory is not None and self.vm is not None
        low = sum(r.size for r in self.memory.regions if r.gpa < 1 << 32 and not r.readonly)
        high = sum(r.size for r in self.memory.regions if r.gpa >= 1 << 32)
        self.fw_cfg = FwCfg(self.mem_size, self.cpus)
        self.testdev = PcTestScratch()
        self.testdev_flush = PcTestFlush(self.memory)
        self.testdev_iomem = PcTestIomem()
        self.rtc = Rtc(low, high)
        self.acpi_pm = AcpiPm()
        for space, base, n, dev in (
                (Space.PIO, FW_CFG_PORT_SEL, 2, self.fw_cfg),
                (Space.PIO, SCRATCH_PORT, 4, self.testdev),
                (Space.PIO, FLUSH_PORT, 4, self.testdev_flush),
                (Space.PIO, IRQ_PORT, IRQ_LINES, PcTestIrq(self.vm.irq_line)),
                (Space.MMIO, IOMEM_BASE, IOMEM_LEN, self.testdev_iomem),
                (Space.PIO, BOCHS_SHUTDOWN_PORT, 1, BochsShutdown()),
                (Space.PIO, PCI_CONFIG_ADDRESS, 8, PciConfigMech1()),
                (Space.PIO, PM_BASE, 12, self.acpi_pm),
                (Space.PIO, 0x70, 2, self.rtc)):
            self.add_device(space, base, n, dev)
        addr, tables = acpi.build(self.cpus)
        self.memory.write(addr, tables)
        bios.write_ivt(self.memory)
        if self.irqchip == "kernel":
            bios.init_pics(self.vm)

    @classmethod
    def from_multiboot(cls, path: str | Path, *, cmdline: str = "",
                       initrd: str | Path | None = None, **kw: Any) -> Machine:
        """A PC with the PIT and :meth:`add_pc_platform`, running a multiboot kernel as
        ``qemu-system-x86_64 -kernel PATH -append CMDLINE -initrd INITRD`` would."""
        from pyvmm.loader.multiboot import Module, load_multiboot

        image = load_multiboot(path)
        modules = []
        if initrd is not None:
            try:
                modules.append(Module(Path(initrd).read_bytes(), str(initrd)))
            except OSError as e:
                raise GuestImageError(f"{initrd}: {e.strerror}") from None
        kw.setdefault("mem", "128M")
        kw.setdefault("pit", True)
        m = cls(**kw)
        try:
            m.add_pc_platform()
            m.load_multiboot(image, cmdline, modules)
        except BaseException:
            m.close()
            raise
        return m

    def load_multiboot(self, image: MultibootImage, cmdline: str = "",
                       modules: list[Module] | None = None) -> None:
        """Load a multiboot v1 kernel as QEMU's -kernel does: the command line the kernel
        sees is ``"<path> <cmdline>"``; ``modules`` (``--initrd``) follow the kernel."""
        from pyvmm.loader.multiboot import BOOT_MAGIC, INFO_ADDR, plan_multiboot

        assert self.memory is not None
        full = f"{image.path} {cmdline}".rstrip()
        ram = [(r.gpa, r.size) for r in self.memory.regions if not r.readonly]
        plan = plan_multiboot(ram, image, full, modules or [])
        for seg in image.segments:
            self.memory.write(seg.paddr, seg.data)
        for gpa, data in plan.writes:
            self.memory.write(gpa, data)
        gdt = INFO_ADDR + MB_GDT_OFFSET
        self.memory.write(gdt, gdt_bytes())
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        set_protected_mode(sregs, gdt_base=gdt)
        bsp.set_sregs(sregs)
        bsp.set_regs(ffi.new("struct kvm_regs *", {"rip": image.entry, "rax": BOOT_MAGIC,
                                                   "rbx": plan.info_addr, "rflags": 0x2}))
        self.image = image
        self.cmdline = full
        self.multiboot_plan = plan

    def enter_real_mode(self, address: int) -> None:
        """Start the BSP in real mode at ``address`` (below 1 MiB, 16-byte aligned) instead
        of the ELF64 entry: for guests that bring themselves up from real mode."""
        if address % 16 or not 0 <= address < 0x100000:
            raise ValueError(f"real-mode entry {address:#x} must be 16-byte aligned below 1 MiB")
        bsp = self.vcpus[0]
        sregs = bsp.get_sregs()
        set_real_mode(sregs, address >> 4)
        bsp.set_sregs(sregs)
        bsp.set_regs(ffi.new("struct kvm_regs *", {"rip": 0, "rflags": 0x2}))

    # --- running ---------------------------------------------------------------
    def _ensure_loops(self) -> None:
        if not self.loops:
            self.loops = [VcpuLoop(v, self.bus) for v in self.vcpus]

    def vcpu_loop(self, index: int = 0) -> VcpuLoop:
        """The run loop of vCPU ``index``, for driving one vCPU by hand (benchmarks,
        debuggers) instead of :meth:`run`."""
        self._ensure_loops()
        return self.loops[index]

    def stats(self) -> dict[str, dict[str, StatValue]]:
        """A snapshot of the VM's and every vCPU's KVM binary stats (the stats fds are
        opened on first use, so machines driven by hand do not pay for them)."""
        if not self._stats and self.vm is not None:
            self._stats.append(("vm", self.vm.get_stats_fd()))
            self._stats += [(f"vcpu{v.id}", v.get_stats_fd()) for v in self.vcpus]
        return {name: r.read() for name, r in self._stats}

    def run(self, timeout: float | None = None, *, python_loop: bool = False) -> RunResult:
        """Run every vCPU on its own thread until the guest stops, crashes or ``timeout``
        seconds pass (None: no limit).  Ctrl-C stops the vCPUs and returns ``interrupted``.
        May be called again to continue."""
        if self.image is None:
            raise GuestImageError("no guest loaded")
        self._ensure_loops()
        for loop in self.loops:
            loop.reset_kick()
        before = self.stats()
        serial_start = len(self._serial)
        events_start = len(self.events)
        done = self._done = threading.Event()
        self._stopped_by_host = False
        outcomes: list[Outcome] = []
        crash_box: list[GuestCrash] = []
        lock = threading.Lock()

        def vcpu_thread(loop: VcpuLoop) -> None:
            try:
                out = loop.run_python() if python_loop else loop.run()
            except Exception as e:  # a VMM bug or a device handler's error
                out = Outcome("error", loop.vcpu.id, reason=f"{type(e).__name__}: {e}",
                              details={"traceback": traceback.format_exc()})
            if out.kind == "crash":
                c = capture(loop.vcpu, self.memory, self.image.symbols if self.image else None,
                            out.reason, out.details)
                with lock:
                    crash_box.append(c)
            with lock:
                outcomes.append(out)
            if out.kind != "kicked":
                done.set()

        threads = [threading.Thread(target=vcpu_thread, args=(lp,), name=f"vcpu{lp.vcpu.id}",
                                    daemon=True) for lp in self.loops]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        interrupted = False
        try:
            deadline = None if timeout is None else t0 + timeout
            while not done.is_set():
                left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
                if left <= 0:
                    break
                done.wait(left)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            self._stop_all(threads)
        duration = time.monotonic() - t0
        result = self._result(outcomes, crash_box, timeout, interrupted, duration)
        result.serial = bytes(self._serial[serial_start:])
        result.events = self.events[events_start:]
        after = self.stats()
        result.stats = {k: delta(dict(r.descriptors), before[k], after[k]) for k, r in self._stats}
        return result

    def start(self, timeout: float | None = None, *, python_loop: bool = False) -> None:
        """:meth:`run` on a background thread: follow it with :meth:`wait_event`, end it
        with :meth:`join` (or :meth:`stop` first)."""
        if self._runner is not None and self._runner.is_alive():
            raise RuntimeError("the machine is already running")
        self._bg_result = None

        def body() -> None:
            self._bg_result = self.run(timeout, python_loop=python_loop)

        self._runner = threading.Thread(target=body, name="pyvmm-run", daemon=True)
        self._runner.start()

    def wait_event(self, kind: str | None = None, stage: int | None = None,
                   timeout: float | None = None) -> GuestEvent | None:
        """The next guest event of ``kind`` (and sync ``stage``), or None after ``timeout``
        seconds; events that do not match are skipped (they stay in :attr:`events`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ev = self.next_event(left)
            if ev is None:
                return None
            if (kind is None or ev.kind == kind) and (stage is None or ev.stage == stage):
                return ev

    def stop(self) -> None:
        """Ask a running :meth:`run`/:meth:`start` to stop every vCPU now."""
        self._stopped_by_host = True
        if self._done is not None:
            self._done.set()

    def join(self, timeout: float | None = None) -> RunResult:
        """Wait for a :meth:`start`-ed run and return its result."""
        if self._runner is None:
            raise RuntimeError("start() was not called")
        self._runner.join(timeout)
        if self._runner.is_alive():
            raise TimeoutError("the run is still going; call stop() first")
        assert self._bg_result is not None
        return self._bg_result

    def _stop_all(self, threads: list[threading.Thread]) -> None:
        """Kick until every vCPU thread has left KVM_RUN (a kick can race with a thread
        that is just entering the loop, so it is repeated)."""
        while any(t.is_alive() for t in threads):
            for loop in self.loops:
                loop.kick()
            for t in threads:
                t.join(0.05)
        for loop in self.loops:
            loop.drain()
            loop.collect_unclaimed()

    def _result(self, outcomes: list[Outcome], crashes: list[GuestCrash], timeout: float | None,
                interrupted: bool, duration: float) -> RunResult:
        final = [o for o in outcomes if o.kind != "kicked"]
        counts: Counter[str] = Counter()
        per_vcpu = []
        hits: Counter[str] = Counter()
        for loop in self.loops:
            c = loop.exit_counts()
            per_vcpu.append(c)
            counts.update(c)
            hits.update(loop.fast_hits())
        res = RunResult("timeout", None, b"", exit_counts=dict(counts), vcpu_exit_counts=per_vcpu,
                        fast_hits=dict(hits), kvm_runs=sum(lp.c.kvm_runs for lp in self.loops),
                        unclaimed=self.bus.unclaimed_summary(), duration=duration,
                        outcomes=outcomes)
        if final:
            first = final[0]
            res.status, res.exit_code, res.message = first.kind, first.code, first.reason
            if first.kind == "crash" and crashes:
                res.crash = crashes[0]
            res.assertion = first.details.get("event")
        elif interrupted:
            res.status, res.message = "interrupted", "interrupted (Ctrl-C)"
        elif self._stopped_by_host:
            res.status, res.message = "stopped", "stopped by Machine.stop()"
        else:
            res.message = f"guest did not stop within {timeout:g} s" if timeout else "stopped"
        return res

    # --- teardown --------------------------------------------------------------
    def close(self) -> None:
        """Close every fd and unmap all memory (vCPUs, then the VM, then RAM)."""
        if self._runner is not None and self._runner.is_alive():
            self.stop()
            self._runner.join()
        for _, reader in self._stats:
            reader.close()
        self._stats.clear()
        if self.vm is not None:
            self.vm.close()  # closes its vCPUs and their kvm_run mappings
        if self.memory is not None:
            self.memory.close()
        if self.kvm is not None:
            self.kvm.close()
        self.loops.clear()
        self.vcpus.clear()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
