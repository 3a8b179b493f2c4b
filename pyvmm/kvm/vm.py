"""``Vm``: a VM fd and its ioctls (memslots, irqchip, PIT, irq lines, eventfds, stats)."""

from __future__ import annotations

from pyvmm.kvm.errors import step_error
from pyvmm.kvm.fd import FdObject
from pyvmm.kvm.native import Cdata, ffi, lib
from pyvmm.kvm.vcpu import STEPS, Vcpu

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.kvm.stats import StatsReader

PIC_MASTER = int(lib.KVM_IRQCHIP_PIC_MASTER)
PIC_SLAVE = int(lib.KVM_IRQCHIP_PIC_SLAVE)
IOAPIC = int(lib.KVM_IRQCHIP_IOAPIC)
PIT_SPEAKER_DUMMY = int(lib.KVM_PIT_SPEAKER_DUMMY)
PIT_FLAGS_HPET_LEGACY = int(lib.KVM_PIT_FLAGS_HPET_LEGACY)
#: KVM_SET_USER_MEMORY_REGION flags
MEM_LOG_DIRTY_PAGES = int(lib.KVM_MEM_LOG_DIRTY_PAGES)
MEM_READONLY = int(lib.KVM_MEM_READONLY)


class Vm(FdObject, kind="vm"):
    """A VM created by :meth:`Kvm.create_vm`.  Closing it closes the vCPUs it made.
    ``vcpu_mmap_size`` is KVM_GET_VCPU_MMAP_SIZE, asked once on the system fd."""

    def __init__(self, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(fd)
        self.vcpu_mmap_size = vcpu_mmap_size
        self.vcpus: list[Vcpu] = []
        #: KVM_CAP_XSAVE2 on this VM (the XSAVE area's size); None: ask at the first vCPU
        self.xsave_size: int | None = None
        self._dirty_logs: dict[int, tuple[int, Cdata, Cdata]] = {}

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the VM fd: the answer for this VM (may differ from the
        system fd's, e.g. X2APIC_API)."""
        return self._ioctl_val("KVM_CHECK_EXTENSION", cap)

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> int:
        """KVM_ENABLE_CAP on the VM fd, with up to four arguments."""
        ec = ffi.new("struct kvm_enable_cap *", {"cap": cap, "flags": flags,
                                                 "args": list(args) + [0] * (4 - len(args))})
        return self._ioctl("KVM_ENABLE_CAP", ec)

    def enable_split_irqchip(self, pins: int) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP): LAPICs in KVM, the IOAPIC (``pins``
        routes) and PIC in userspace; before any vCPU."""
        self.enable_cap(lib.KVM_CAP_SPLIT_IRQCHIP, pins)

    def enable_user_space_msr(self) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR, FILTER): an MSR access the filter
        denies exits to userspace (KVM_EXIT_X86_RDMSR/WRMSR) instead of raising #GP."""
        self.enable_cap(lib.KVM_CAP_X86_USER_SPACE_MSR, lib.KVM_MSR_EXIT_REASON_FILTER)

    def deny_msrs(self, indices: list[int]) -> None:
        """KVM_X86_SET_MSR_FILTER denying reads and writes of exactly ``indices``."""
        both = int(lib.KVM_MSR_FILTER_READ | lib.KVM_MSR_FILTER_WRITE)
        self.set_msr_filter([(i, 1, both, b"\0") for i in indices])

    def set_tss_addr(self, addr: int) -> None:
        """KVM_SET_TSS_ADDR: three pages of guest-physical space KVM uses on Intel hosts
        for real-mode emulation; must not overlap RAM or MMIO."""
        self._ioctl_val("KVM_SET_TSS_ADDR", addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """KVM_SET_IDENTITY_MAP_ADDR: one page for the EPT identity map used while the guest
        runs unpaged on Intel hosts."""
        a = ffi.new("uint64_t *", addr)
        self._ioctl("KVM_SET_IDENTITY_MAP_ADDR", a)

    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        """KVM_SET_USER_MEMORY_REGION: map host memory at a guest-physical range.  A size of
        0 deletes the slot; the same slot with a new address moves it."""
        r = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": memory_size, "userspace_addr": userspace_addr})
        self._ioctl("KVM_SET_USER_MEMORY_REGION", r)

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: in-kernel PIC, IOAPIC and per-vCPU LAPICs (before any vCPU)."""
        self._ioctl("KVM_CREATE_IRQCHIP")

    def get_irqchip(self, chip_id: int) -> Cdata:
        """KVM_GET_IRQCHIP: one in-kernel interrupt controller's state (PIC_MASTER,
        PIC_SLAVE or IOAPIC) as a ``struct kvm_irqchip``."""
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        self._ioctl("KVM_GET_IRQCHIP", chip)
        return chip

    def set_irqchip(self, chip: Cdata) -> None:
        """KVM_SET_IRQCHIP: replace one in-kernel interrupt controller's state."""
        self._ioctl("KVM_SET_IRQCHIP", chip)

    def pic_state(self, chip_id: int) -> dict[str, int]:
        """KVM_GET_IRQCHIP of a PIC: its ``kvm_pic_state`` fields by name (``irr``, ``isr``,
        ``imr``, ``last_irr``, ...)."""
        pic = lib.pyvmm_irqchip_pic(self.get_irqchip(chip_id))
        return {name: int(getattr(pic, name)) for name, _ in ffi.typeof(pic[0]).fields}

    def update_pic(self, chip_id: int, **fields: int) -> None:
        """KVM_GET_IRQCHIP + KVM_SET_IRQCHIP: change fields of a PIC's ``kvm_pic_state``
        (``irq_base``, ``imr``, ``init_state``, ...)."""
        chip = self.get_irqchip(chip_id)
        pic = lib.pyvmm_irqchip_pic(chip)
        for name, value in fields.items():
            setattr(pic, name, value)
        self.set_irqchip(chip)

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: in-kernel i8254 PIT; IRQ0 arrives through the irqchip."""
        cfg = ffi.new("struct kvm_pit_config *", {"flags": flags})
        self._ioctl("KVM_CREATE_PIT2", cfg)

    def get_pit2(self) -> Cdata:
        """KVM_GET_PIT2: the in-kernel PIT's three channels and flags (``struct
        kvm_pit_state2``)."""
        st = ffi.new("struct kvm_pit_state2 *")
        self._ioctl("KVM_GET_PIT2", st)
        return st

    def set_pit2(self, state: Cdata) -> None:
        """KVM_SET_PIT2: KVM reloads every channel's count (a channel in mode 2 or 3
        starts counting from it at once)."""
        self._ioctl("KVM_SET_PIT2", state)

    def set_gsi_routing(self, routes: list[tuple[int, int, int]]) -> None:
        """KVM_SET_GSI_ROUTING with irqchip routes ``(gsi, chip, pin)``, chip one of
        PIC_MASTER, PIC_SLAVE, IOAPIC.  Replaces the whole table (a GSI may appear more than
        once: KVM raises every route of it)."""
        r = ffi.new("struct kvm_irq_routing *", {"nr": len(routes), "entries": len(routes)})
        for i, (gsi, chip, pin) in enumerate(routes):
            e = r.entries[i]
            e.gsi, e.type = gsi, lib.KVM_IRQ_ROUTING_IRQCHIP
            ic = lib.pyvmm_routing_irqchip(ffi.addressof(r.entries, i))
            ic.irqchip, ic.pin = chip, pin
        self._ioctl("KVM_SET_GSI_ROUTING", r)

    def irq_line(self, irq: int, level: int) -> int:
        """KVM_IRQ_LINE_STATUS: set a GSI's level; returns KVM's delivery status
        (>0 delivered, 0 masked/coalesced, <0 not delivered)."""
        lvl = ffi.new("struct kvm_irq_level *", {"irq": irq, "level": level})
        self._ioctl("KVM_IRQ_LINE_STATUS", lvl)
        return int(ffi.cast("int32_t", lvl.irq))

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool = False,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        """KVM_IOEVENTFD: a guest write to ``addr`` signals eventfd ``fd`` inside KVM,
        with no exit to userspace (~1 us instead of ~9 us here)."""
        flags = (lib.KVM_IOEVENTFD_FLAG_PIO if pio else 0)
        flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH if datamatch is not None else 0
        flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN if deassign else 0
        ev = ffi.new("struct kvm_ioeventfd *", {"datamatch": datamatch or 0, "addr": addr,
                                               "len": length, "fd": fd, "flags": flags})
        self._ioctl("KVM_IOEVENTFD", ev)

    def irqfd(self, fd: int, gsi: int, *, deassign: bool = False) -> None:
        """KVM_IRQFD: writing to eventfd ``fd`` raises GSI ``gsi`` inside KVM."""
        req = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": 1 if deassign else 0})
        self._ioctl("KVM_IRQFD", req)

    def signal_msi(self, address: int, data: int) -> int:
        """KVM_SIGNAL_MSI: inject one MSI; returns >0 when delivered."""
        msi = ffi.new("struct kvm_msi *", {"address_lo": address & 0xFFFFFFFF,
                                          "address_hi": address >> 32, "data": data})
        return self._ioctl("KVM_SIGNAL_MSI", msi)

    def set_msr_filter(self, ranges: list[tuple[int, int, int, bytes]], *,
                       default_allow: bool = True) -> None:
        """KVM_X86_SET_MSR_FILTER: ``ranges`` of ``(base, nmsrs, flags, bitmap)``; a 0 bit
        denies the accesses in ``flags`` (KVM_MSR_FILTER_READ/WRITE).  A denied access exits
        to userspace when KVM_CAP_X86_USER_SPACE_MSR has KVM_MSR_EXIT_REASON_FILTER."""
        if len(ranges) > lib.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError("too many MSR filter ranges")
        f = ffi.new("struct kvm_msr_filter *")
        f.flags = lib.KVM_MSR_FILTER_DEFAULT_ALLOW if default_allow else lib.KVM_MSR_FILTER_DEFAULT_DENY
        keep = []
        for i, (base, nmsrs, flags, bitmap) in enumerate(ranges):
            buf = ffi.new("uint8_t[]", bytes(bitmap))
            keep.append(buf)
            f.ranges[i].base, f.ranges[i].nmsrs, f.ranges[i].flags = base, nmsrs, flags
            f.ranges[i].bitmap = buf
        self._ioctl("KVM_X86_SET_MSR_FILTER", f)

    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """KVM_REGISTER_COALESCED_MMIO: writes to the zone are queued in a ring, not exited."""
        z = ffi.new("struct kvm_coalesced_mmio_zone *", {"addr": addr, "size": size,
                                                        "pio": int(pio)})
        self._ioctl("KVM_REGISTER_COALESCED_MMIO", z)

    def get_dirty_log(self, slot: int, npages: int) -> bytes:
        """KVM_GET_DIRTY_LOG: one bit per page of ``slot`` written since the last call
        (the call clears it).  The slot needs KVM_MEM_LOG_DIRTY_PAGES."""
        nbytes = ((npages + 63) // 64) * 8
        cached = self._dirty_logs.get(slot)
        if cached is None or cached[0] != nbytes:  # one buffer per slot: restores call often
            bitmap = ffi.new("uint8_t[]", nbytes)
            cached = self._dirty_logs[slot] = (nbytes, bitmap, ffi.new(
                "struct kvm_dirty_log *", {"slot": slot, "dirty_bitmap": bitmap}))
        _, bitmap, log = cached
        self._ioctl("KVM_GET_DIRTY_LOG", log)
        return bytes(ffi.buffer(bitmap, nbytes))

    def get_clock(self) -> Cdata:
        """KVM_GET_CLOCK: the kvmclock base (ns) the guest's pvclock counts from."""
        clock = ffi.new("struct kvm_clock_data *")
        self._ioctl("KVM_GET_CLOCK", clock)
        return clock

    def set_clock(self, clock: Cdata) -> None:
        """KVM_SET_CLOCK: restart the kvmclock at ``clock.clock`` ns (flags cleared: KVM
        takes only the value)."""
        clock.flags = 0
        self._ioctl("KVM_SET_CLOCK", clock)

    def get_stats_fd(self) -> StatsReader:
        """KVM_GET_STATS_FD: the VM's binary statistics (mmu_pte_write, pages_4k, ...)."""
        from pyvmm.kvm.stats import StatsReader  # only machines that read stats load it

        return StatsReader(self._ioctl("KVM_GET_STATS_FD"))

    def create_vcpu(self, vcpu_id: int, reset: Cdata | None = None) -> Vcpu:
        """KVM_CREATE_VCPU: a vCPU whose APIC ID is ``vcpu_id``, its kvm_run mapped and,
        with ``reset`` (a ``struct pyvmm_reset``), the state :meth:`Vcpu.reset` sets: one
        native call (cbindings/setup.c)."""
        if self.xsave_size is None:
            self.xsave_size = self.check_extension(lib.KVM_CAP_XSAVE2)
        run, out = ffi.new("void **"), ffi.new("int[2]")  # step, errno
        fd = lib.pyvmm_vcpu_create(self._fd("KVM_CREATE_VCPU"), vcpu_id, self.vcpu_mmap_size,
                                   ffi.NULL if reset is None else reset, run, out, out + 1)
        if fd < 0:
            raise step_error(out[0], out[1], STEPS)
        return self.adopt_vcpu(vcpu_id, fd, run[0])

    def adopt_vcpu(self, vcpu_id: int, fd: int, run: Cdata) -> Vcpu:
        """The vCPU behind ``fd`` with its kvm_run mapping ``run``, made by a native call
        (``pyvmm_vcpu_create``, ``pyvmm_machine_create``); owned from here on."""
        if self.xsave_size is None:
            self.xsave_size = self.check_extension(lib.KVM_CAP_XSAVE2)
        vcpu = Vcpu(fd, vcpu_id, self.vcpu_mmap_size, self.xsave_size, run=run)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        for v in self.vcpus:
            v.close()
        self.vcpus.clear()
        super().close()
