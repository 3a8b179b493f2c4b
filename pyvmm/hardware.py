"""A machine's hardware as KVM builds it: the VM with its interrupt controller and PIT,
guest RAM in memslots, and the vCPUs as firmware would leave them.

The order is KVM's and the host's: on kvm_pvm a memslot added to a VM that has an
in-kernel PIC/IOAPIC waits for an SRCU grace period (~6 ms), so the irqchip comes before
the memslots (paid once, at creation, instead of ~15 ms at destruction).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence

from pyvmm.config import SPLIT_IRQCHIP_PINS
from pyvmm.devices.bus import Bus
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.fastpath import FastEntry
from pyvmm.devices.msr import MsrHandlers
from pyvmm.devices.post import PostPort
from pyvmm.devices.uart import Uart16550
from pyvmm.devices.ucall import GuestEvent, UcallDevice
from pyvmm.kvm.errors import KvmError, step_error
from pyvmm.kvm.hostmem import HostMapping, ram_error, shmem_thp
from pyvmm.kvm.native import ffi, lib
from pyvmm.kvm.system import CAP_MAX_VCPUS, CAP_SET_IDENTITY_MAP_ADDR, CAP_SET_TSS_ADDR, Kvm
from pyvmm.kvm.vcpu import STEPS, Vcpu
from pyvmm.kvm.vm import PIT_SPEAKER_DUMMY, Vm
from pyvmm.loader.symbols import Symbols
from pyvmm.memory import GuestMemory
from pyvmm.vstate.result import Outcome
from pyvmm.x86 import layout
from pyvmm.x86.cpuid import parse_cpu_features
from pyvmm.x86.reset import lapic_page, reset_state

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any, Protocol

    from pyvmm.platform.pc import PcMachine, PcPlatform

    #: what :func:`build` made: the VM, its RAM, the bus with the machine's own devices
    #: (each at the ports it declares), the MSR handlers, the UART, debug-exit, POST and
    #: test-protocol devices, the vCPUs (BSP first) and their LAPICs as reset left them
    #: (a plain tuple, not a NamedTuple: one is built at import, through exec)
    Board = tuple[Vm, GuestMemory, Bus, MsrHandlers, Uart16550, DebugExit, PostPort,
                  UcallDevice, list[Vcpu], list[bytes | None]]

    class Sleeper(Protocol):
        def sleep_s3(self, vcpus: Sequence[Vcpu], reset_lapics: Sequence[bytes | None],
                     left: float | None, stop: threading.Event) -> bool | Outcome: ...


#: the answer of :func:`vm86_possible`, once per process
_VM86: list[bool] = []
_SYS_MODULE = "/sys/module"


def vm86_possible() -> bool:
    """Whether KVM may run the guest's real-mode and unpaged protected-mode code in vm86
    mode, which needs the TSS and identity-map pages (KVM_SET_TSS_ADDR and
    KVM_SET_IDENTITY_MAP_ADDR): only VMX without "unrestricted guest" does (Intel CPUs
    before Westmere, or kvm_intel loaded with unrestricted_guest=N).  Read from kvm_intel's
    parameter, once; where the host does not say (no /sys/module), assume it may."""
    if not _VM86:
        try:
            with open(f"{_SYS_MODULE}/kvm_intel/parameters/unrestricted_guest", "rb") as f:
                _VM86.append(f.read().strip() != b"Y")
        except OSError:  # no kvm_intel (AMD, kvm_pvm), or a /sys that does not tell
            _VM86.append(not os.path.isdir(f"{_SYS_MODULE}/kvm")
                         or os.path.isdir(f"{_SYS_MODULE}/kvm_intel"))
    return _VM86[0]


#: each RAM range's region name (layout.ram_ranges: below the MMIO hole, above 4 GiB)
_RAM_NAMES = ("ram", "ram-high")
#: what each vCPU gets at reset, and what its struct points to (pyvmm.x86.reset)
Resets = list[tuple["Any", tuple["Any", tuple[object, ...] | None, "Any"]]]

#: the interrupt controller of each irqchip mode, as cbindings/setup.h names it
_IRQCHIPS = {"none": int(lib.PYVMM_IRQCHIP_NONE), "kernel": int(lib.PYVMM_IRQCHIP_KERNEL),
             "split": int(lib.PYVMM_IRQCHIP_SPLIT)}


def vm_spec(kvm: Kvm, cpus: int, irqchip: str, pit: bool) -> dict[str, int]:
    """The ``struct pyvmm_vm_spec`` of a VM with ``irqchip`` ("kernel", "split" or "none")
    and the in-kernel PIT: the vm86 pages where KVM may use them, KVM_CREATE_IRQCHIP and
    KVM_CREATE_PIT2, or KVM_ENABLE_CAP(SPLIT_IRQCHIP), all before any memslot (module
    docstring).  KvmError for more vCPUs than this KVM allows."""
    # three KVM_CHECK_EXTENSIONs, not Kvm.capabilities (~90 of them): machines are
    # created by the thousand and every microsecond of set-up counts
    max_vcpus = kvm.check_extension(CAP_MAX_VCPUS) or 1
    if cpus > max_vcpus:
        raise KvmError("KVM_CREATE_VCPU", 22, f"this KVM allows {max_vcpus} vCPUs")
    vm86 = vm86_possible()  # two ioctls every machine would pay for nothing elsewhere
    return {
        "irqchip": _IRQCHIPS[irqchip], "pit": int(pit and irqchip == "kernel"),
        "pit_flags": PIT_SPEAKER_DUMMY,  # port 0x61 handled in KVM
        "split_pins": SPLIT_IRQCHIP_PINS,
        "tss_addr": layout.TSS_ADDR if vm86 and kvm.check_extension(CAP_SET_TSS_ADDR) else 0,
        "identity_map_addr": layout.IDENTITY_MAP_ADDR
        if vm86 and kvm.check_extension(CAP_SET_IDENTITY_MAP_ADDR) else 0}


def create_vm(kvm: Kvm, cpus: int, irqchip: str, pit: bool) -> Vm:
    """The VM of :func:`vm_spec`, in one native call (KVM_CREATE_VM and the rest)."""
    return kvm.create_vm(spec=ffi.new("struct pyvmm_vm_spec *", vm_spec(kvm, cpus, irqchip, pit)))


def create_machine(kvm: Kvm, cpus: int, irqchip: str, pit: bool, mem_size: int,
                   resets: Resets) -> tuple[Vm, GuestMemory, list[Vcpu]]:
    """The VM (:func:`vm_spec`), ``mem_size`` of fresh RAM in the PC layout's ranges and
    the vCPUs reset with ``resets``, in one native call (``pyvmm_machine_create``), which
    closes what it made if a step fails; each vCPU publishes its GPRs in kvm_run on every
    exit (KVM_CAP_SYNC_REGS: sregs and events too would cost ~0.3 us per exit here,
    measured, so those are read by ioctl when needed)."""
    ranges = layout.ram_ranges(mem_size)
    spec = ffi.new("struct pyvmm_machine_spec *", {
        "vm": vm_spec(kvm, cpus, irqchip, pit), "nram": len(ranges),
        "ram_gpa": [gpa for gpa, _ in ranges], "ram_size": [size for _, size in ranges],
        "advise": shmem_thp(), "ncpus": cpus, "run_size": kvm.vcpu_mmap_size,
        "valid_regs": lib.KVM_SYNC_X86_REGS, "reset": [reset for reset, _ in resets]})
    made = ffi.new("struct pyvmm_machine *")
    if lib.pyvmm_machine_create(kvm.fd, spec, made) < 0:
        step, err, i = int(made.step), int(made.err), int(made.index)
        if step in (lib.PYVMM_STEP_RAM, lib.PYVMM_STEP_SET_USER_MEMORY_REGION):
            raise ram_error(step, int(made.ram_fd[i]), err, ranges[i][1], _RAM_NAMES[i])
        raise step_error(step, err, STEPS)
    vm: Vm | None = None
    memory: GuestMemory | None = None
    try:
        vm = Vm(made.vm_fd, kvm.vcpu_mmap_size)  # owns the VM's fd from here
        memory = GuestMemory(vm)
        vm.xsave_size = kvm.xsave_size(vm)
        for i, (gpa, size) in enumerate(ranges):
            memory.adopt_ram(gpa, size, HostMapping.adopt(made.ram[i], made.ram_fd[i], size),
                             name=_RAM_NAMES[i])
        return vm, memory, [vm.adopt_vcpu(i, made.vcpu_fd[i], made.run[i])
                            for i in range(cpus)]
    except BaseException:  # (a signal, say): each object closed once, by its owner
        vcpus_owned = len(vm.vcpus) if vm is not None else 0
        ram_owned = len(memory.regions) if memory is not None else 0
        for i in range(vcpus_owned, cpus):
            lib.pyvmm_munmap(made.run[i], spec.run_size)
            os.close(made.vcpu_fd[i])
        if vm is None:
            os.close(made.vm_fd)
        close(None, vm, memory, None)
        for i in range(ram_owned, len(ranges)):
            lib.pyvmm_munmap(made.ram[i], ranges[i][1])
            if made.ram_fd[i] >= 0:
                os.close(made.ram_fd[i])
        raise


def add_guest_ram(memory: GuestMemory, mem_size: int,
                  ram_file: tuple[int, list[int]] | None) -> None:
    """``mem_size`` of RAM in the PC layout's ranges; from ``ram_file`` (fd, offset per
    range: a snapshot file's RAM, mapped copy-on-write) when given."""
    for i, (gpa, size) in enumerate(layout.ram_ranges(mem_size)):
        file = (ram_file[0], ram_file[1][i]) if ram_file is not None else None
        # a clone's slots log dirty pages from the start: turning it on later would
        # change the memslot, which waits for an SRCU grace period under an irqchip
        memory.add_ram(gpa, size, name=_RAM_NAMES[i], file=file, log_dirty=file is not None)


def vcpu_resets(kvm: Kvm, cpus: int, irqchip: str, cpu_features: str) -> Resets:
    """What each of ``cpus`` vCPUs gets at reset (:func:`pyvmm.x86.reset.reset_state`),
    made before the VM: the CPUID is asked of KVM only when it is not cached yet."""
    supported: list[dict[str, int]] = []

    def leaves() -> list[dict[str, int]]:  # only when the CPUID is not cached yet
        if not supported:
            supported.extend(kvm.get_supported_cpuid())
        return supported

    features = parse_cpu_features(cpu_features, leaves()) if cpu_features else {}
    return [reset_state(i, leaves, cpus, lapic=irqchip != "none", features=features,
                        kvm_path=kvm.path, irqchip=irqchip) for i in range(cpus)]


def create_vcpus(vm: Vm, resets: Resets, vcpus: list[Vcpu]) -> None:
    """Append a vCPU per reset state to ``vcpus`` (a list the caller owns, so that those
    made before a failure are closed with the VM), each reset as firmware leaves it."""
    for i, (reset, _) in enumerate(resets):
        vcpus.append(vm.create_vcpu(i, reset))  # and reset: one native call


def close(bus: Bus | None, vm: Vm | None, memory: GuestMemory | None, kvm: Kvm | None) -> None:
    """Release what :func:`create_vm` and the machine built, in the order that is safe:
    devices first (the HPET's timer threads end while the VM's fd is open), then the VM
    (its vCPUs and their kvm_run mappings), then RAM, then /dev/kvm."""
    if bus is not None:
        bus.close()
    if vm is not None:
        vm.close()
    if memory is not None:
        memory.close()
    if kvm is not None:
        kvm.close()


def build(kvm: Kvm, *, cpus: int, irqchip: str, pit: bool, mem_size: int, cpu_features: str,
          ram_file: tuple[int, list[int]] | None, strict_io: bool, serial: Callable[[bytes], None],
          symbols: Callable[[], Symbols | None], emit: Callable[[GuestEvent], None],
          fast_change: Callable[[FastEntry], None]) -> Board:
    """The whole machine below the API, or nothing: what was made before a failure is
    closed again (``serial``, ``symbols``, ``emit`` and ``fast_change`` are the machine's
    own callbacks for the UART, the test protocol and the UART's C-path switch).

    What Python builds comes before KVM's calls or after them, not between: the VM, its
    RAM and its vCPUs are made back to back.  Python run between KVM calls slows both
    down (each leaves the other's caches cold): a machine's set-up took ~60 us longer
    with four slices of ~20 us of Python between the same calls than with them after
    (measured on a nested kvm_pvm host)."""
    uart = Uart16550(serial)
    uart.on_fast_change = fast_change
    debug_exit, post = DebugExit(), PostPort()
    bus = Bus(strict=strict_io)
    msrs = MsrHandlers()
    resets = vcpu_resets(kvm, cpus, irqchip, cpu_features)
    if ram_file is None:
        vm, memory, vcpus = create_machine(kvm, cpus, irqchip, pit, mem_size, resets)
    else:  # a clone: RAM from the snapshot's file, logging dirty pages from the start
        vm = create_vm(kvm, cpus, irqchip, pit)
        memory = GuestMemory(vm)
        vcpus = []
        try:
            add_guest_ram(memory, mem_size, ram_file)
            create_vcpus(vm, resets, vcpus)
            for vcpu in vcpus:
                vcpu.enable_sync_regs()  # as pyvmm_machine_create does (create_machine)
        except BaseException:
            close(None, vm, memory, None)
            raise
    try:  # (a signal may come here too: Machine.__init__ cannot close what it has not got)
        ucall = UcallDevice(memory, symbols, emit)
        bus.attach_devices((uart, debug_exit, post, ucall))
        lapics = [lapic_page(page) for _, page in resets]
    except BaseException:
        close(bus, vm, memory, None)
        raise
    return vm, memory, bus, msrs, uart, debug_exit, post, ucall, vcpus, lapics


def pc_platform(machine: PcMachine) -> PcPlatform:
    """The PC devices and firmware state of QEMU's ``-kernel`` (``Machine.add_pc_platform``).
    ``pyvmm.platform.pc`` is imported here, on use: only multiboot guests need it."""
    from pyvmm.platform.pc import PcPlatform

    return PcPlatform(machine)


def sleep_s3(chipset: Sleeper | None, vcpus: Sequence[Vcpu], reset_lapics: Sequence[bytes | None],
             left: float | None, stop: threading.Event) -> bool | Outcome:
    """The guest entered ACPI S3: the chipset (``PcPlatform.sleep_s3``) wakes it; with none,
    it sleeps for good (until the timeout, a stop or a signal: False)."""
    if chipset is None:
        stop.wait(left)
        return False
    return chipset.sleep_s3(vcpus, reset_lapics, left, stop)
