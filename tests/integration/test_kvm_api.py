"""The ioctl wrappers against the real KVM: each round-trips or reports what KVM did."""

from __future__ import annotations

import gc
import os

import pytest

from pyvmm import Machine, Space
from pyvmm._native import lib
from pyvmm.kvm import Kvm, KvmError
from pyvmm.x86.msrs import IA32_PAT, PAT_RESET


@pytest.fixture
def vm():
    kvm = Kvm()
    vm = kvm.create_vm()
    vm.create_irqchip()
    yield vm
    vm.close()
    kvm.close()


def test_system_ioctls():
    with Kvm() as kvm:
        assert kvm.get_api_version() == 12
        assert kvm.get_vcpu_mmap_size() >= 4096
        assert kvm.capabilities["SYNC_REGS"] & lib.KVM_SYNC_X86_REGS
        with pytest.raises(TypeError):
            kvm.capabilities["X"] = 1  # read-only mapping
        leaves = {e["function"] for e in kvm.get_supported_cpuid()}
        assert {0, 1, 0x80000000} <= leaves
        assert IA32_PAT in kvm.get_msr_index_list()


def test_vcpu_state_round_trips(vm):
    v = vm.create_vcpu(0)
    regs = v.get_regs()
    regs.update(rax=0x1234, rip=0x100000)
    v.set_regs(regs)
    assert (v.get_regs()["rax"], v.get_regs()["rip"]) == (0x1234, 0x100000)
    with pytest.raises(ValueError, match="not a register"):
        v.set_regs(rxx=1)
    sregs = v.get_sregs()
    sregs.cr0 |= 1
    v.set_sregs(sregs)
    assert v.get_sregs().cr0 & 1
    assert v.get_msrs([IA32_PAT]) == {IA32_PAT: PAT_RESET}
    assert v.set_msrs({IA32_PAT: 0x0606060606060606}) == 1
    assert v.get_msrs([IA32_PAT])[IA32_PAT] == 0x0606060606060606
    fpu = v.get_fpu()
    fpu.fcw = 0x37F
    v.set_fpu(fpu)
    assert v.get_fpu().fcw == 0x37F
    lapic = v.get_lapic()
    lapic[0x80:0x84] = (0x20).to_bytes(4, "little")  # TPR
    v.set_lapic(bytes(lapic))
    assert v.get_lapic()[0x80] == 0x20
    assert v.get_mp_state() == lib.KVM_MP_STATE_RUNNABLE
    v.set_mp_state(lib.KVM_MP_STATE_HALTED)
    assert v.get_mp_state() == lib.KVM_MP_STATE_HALTED
    ev = v.get_vcpu_events()
    v.set_vcpu_events(ev)
    area = v.get_xsave()
    v.set_xsave(area)
    assert len(area) >= 4096
    xcrs = v.get_xcrs()
    assert xcrs.get(0, 1) & 1  # x87 is always enabled in XCR0
    v.set_xcrs(xcrs)
    v.set_guest_debug(lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_SINGLESTEP)
    v.set_guest_debug(0)
    assert v.get_tsc_khz() > 0
    assert {e["function"] for e in v.get_cpuid2()} == set()  # nothing set yet


def test_translate_walks_the_guest_page_tables(guests):
    with Machine.from_elf(guests / "hello.elf") as m:
        v = m.vcpus[0]
        assert v.translate(0x100000) == 0x100000  # pyvmm identity-maps RAM
        assert v.translate(0xFEE00ABC) == 0xFEE00ABC  # and the MMIO hole
        assert v.translate(1 << 45) is None  # nothing up there


APIC_SVR, APIC_IRR = 0xF0, 0x200
SVR_ENABLE = 1 << 8


def _irr_has(lapic: bytes, vector: int) -> bool:
    word = int.from_bytes(lapic[APIC_IRR + vector // 32 * 16:][:4], "little")
    return bool(word >> vector % 32 & 1)


def test_msi_coalesced_mmio_and_feature_msrs(vm):
    v = vm.create_vcpu(0)
    lapic = v.get_lapic()
    lapic[APIC_SVR:APIC_SVR + 4] = (0xFF | SVR_ENABLE).to_bytes(4, "little")  # software-enabled
    v.set_lapic(lapic)
    assert not _irr_has(v.get_lapic(), 0x30)
    # fixed-delivery MSI to APIC 0, vector 0x30: KVM reports it delivered to one LAPIC
    # (KVM_SIGNAL_MSI returns how many took it) and the vector is pending in its IRR
    assert vm.signal_msi(0xFEE00000, 0x30) == 1
    assert _irr_has(v.get_lapic(), 0x30)
    with Kvm() as kvm:
        assert isinstance(kvm.get_msr_feature_index_list(), list)


def test_coalesced_mmio_write_lands_in_the_ring(guests):
    """A write into a coalesced zone does not exit: KVM queues it in the ring at page
    KVM_CAP_COALESCED_MMIO of the vCPU's kvm_run mapping, with its address, size and data
    (the guest's read of the same address still exits, to the handler)."""
    import struct

    from pyvmm._native import ffi

    reads = []
    with Machine.from_elf(guests / "selftest.elf", cmdline="mmio 0x20000000") as m:
        page = m.kvm.check_extension(lib.KVM_CAP_COALESCED_MMIO)
        assert page >= 1
        m.vm.register_coalesced_mmio(0x20000000, 0x1000)
        m.add_handler(Space.MMIO, 0x20000000, 0x1000, write=lambda a, s, v: reads.append(("w", v)),
                      read=lambda a, s: reads.append(("r", a)) or 0x1234ABCD, name="zone")
        r = m.run(timeout=30)
        assert r.ok, r.message
        ring = bytes(ffi.buffer(ffi.cast("char *", m.vcpus[0].kvm_run) + page * 4096, 4096))
    first, last = struct.unpack_from("<II", ring)
    assert (first, last) == (0, 1)  # one entry queued, none consumed
    gpa, size, _pio, data = struct.unpack_from("<QII8s", ring, 8)
    assert (gpa, size, data[:4]) == (0x20000000, 4, (0x1234ABCD).to_bytes(4, "little"))
    assert reads == [("r", 0x20000000)]  # the write never exited


def test_removed_memslot_exits_as_mmio(guests):
    seen = []
    with Machine.from_elf(guests / "selftest.elf", cmdline="mmio 0x20000000") as m:
        region = m.add_ram(0x20000000, 0x1000, name="gone")
        m.memory.remove(region)
        assert not m.memory.is_ram(0x20000000)
        m.add_handler(Space.MMIO, 0x20000000, 0x1000, write=lambda a, s, v: seen.append(v),
                      read=lambda a, s: seen[-1], name="after-remove")
        r = m.run(timeout=30)
    assert r.ok, r.message
    assert seen == [0x1234ABCD]


def test_write_many_lands_each_write_in_its_region_and_refuses_what_is_not_ram():
    from pyvmm.errors import GuestMemoryError

    with Machine(mem="2M", irqchip="none") as m:
        high = m.add_ram(0x40000000, 0x2000, name="high")
        m.memory.write_many([(0x1000, b"a"), (0x40000000, b"bb"), (0x1FFFFF, b"c"),
                             (0x40001FFE, b"de"), (0x3000, memoryview(b"f"))])
        assert [m.memory.read(g, n) for g, n in ((0x1000, 1), (0x40000000, 2), (0x1FFFFF, 1),
                                                 (0x40001FFE, 2), (0x3000, 1))] == \
            [b"a", b"bb", b"c", b"de", b"f"]
        for bad in ((0x1FFFFF, b"xy"), (0x40001FFF, b"xy"), (0x300000, b"x"), (0x300000, b""),
                    (-1, b"x")):
            with pytest.raises(GuestMemoryError):  # past a region's end, or no RAM at all
                m.memory.write_many([(0x1000, b"z"), bad])
        m.memory.remove(high)
        with pytest.raises(GuestMemoryError):
            m.memory.write_many([(0x40000000, b"x")])


def test_ap_waits_for_sipi(vm):
    vm.create_vcpu(0)
    ap = vm.create_vcpu(1)
    assert ap.get_mp_state() == lib.KVM_MP_STATE_UNINITIALIZED


def test_errors_name_the_ioctl(vm):
    vm.create_vcpu(0)
    with pytest.raises(KvmError) as e:
        vm.create_vcpu(0)
    assert e.value.ioctl == "KVM_CREATE_VCPU" and "already exists" in str(e.value)
    with pytest.raises(KvmError, match="KVM_CREATE_IRQCHIP"):
        vm.create_irqchip()


@pytest.mark.parametrize("irqchip", ["kernel", "split", "none"])
def test_a_new_machine_s_vcpus_are_as_firmware_leaves_them(irqchip):
    """What x86/reset.py's one native call (cbindings/setup.c) set, read back ioctl by
    ioctl: CPUID, the MSRs' reset values, the x87/SSE reset state, LINT0/LINT1 in
    virtual-wire mode, and the LAPIC page kept for an S3 resume is the one KVM holds."""
    for _ in range(2):  # the second: its LAPIC page from memory (x86/reset.py), not KVM's
        _check_reset_state(irqchip)


def _check_reset_state(irqchip):
    with Machine(mem="16M", cpus=1 if irqchip == "none" else 2, irqchip=irqchip) as m:
        for i, v in enumerate(m.vcpus):
            assert {e["function"] for e in v.get_cpuid2()} >= {0, 1}
            assert v.get_msrs([IA32_PAT]) == {IA32_PAT: PAT_RESET}
            # KVM_GET/SET_FPU leave MXCSR out (KVM copies the x87 and XMM registers only):
            # it is read from the XSAVE area's legacy region (byte 24)
            xsave = v.get_xsave()
            assert (v.get_fpu().fcw, int.from_bytes(xsave[24:28], "little")) == (0x37F, 0x1F80)
            if irqchip == "none":
                assert m._reset_lapics[i] is None
                continue
            page = v.get_lapic()
            lint = [int.from_bytes(page[off:off + 4], "little") for off in (0x350, 0x360)]
            assert lint == [0x700, 0x400]
            assert int.from_bytes(page[0x20:0x24], "little") >> 24 == i  # its own APIC ID
            assert m._reset_lapics[i] == bytes(page)


def test_native_set_up_failures_name_the_ioctl(vm):
    """A failed step of a native set-up call is the KvmError of that ioctl."""
    from pyvmm.kvm.native import ffi
    from pyvmm.x86.entry import EntryState, mode_sregs

    v = vm.create_vcpu(0)
    bad = ffi.new("struct kvm_sregs *")
    ffi.memmove(bad, mode_sregs(EntryState.long_mode(0x1000, cr3=0x2000, gdt_base=0x500)),
                ffi.sizeof(bad[0]))
    bad.cr0 = 1 << 31  # paging without protection: KVM refuses it
    with pytest.raises(KvmError) as e:
        v.enter(bad, ffi.new("struct kvm_regs *"))
    assert e.value.ioctl == "KVM_SET_SREGS" and e.value.errno == 22
    v.close()
    with pytest.raises(KvmError) as e:
        v.enter(bad, ffi.new("struct kvm_regs *"))
    assert e.value.errno == 9  # closed: refused before any ioctl


@pytest.mark.parametrize("irqchip", ["kernel", "split"])
def test_a_remembered_lapic_page_is_what_kvm_gives_a_new_vcpu(irqchip):
    """x86/reset.py remembers a new vCPU's LAPIC page (per id, CPUID and irqchip mode) and
    skips KVM_GET_LAPIC for the next like it: that page must be the one KVM would have read,
    here from vCPUs of a VM made apart, reset without the memory (no kvm_path)."""
    from pyvmm.kvm.native import ffi
    from pyvmm.x86.reset import lapic_page, reset_state

    for _ in range(2):  # the second machine's pages come from memory
        with Machine(mem="16M", cpus=2, irqchip=irqchip) as m:
            remembered = list(m._reset_lapics)
    mode = lib.PYVMM_IRQCHIP_KERNEL if irqchip == "kernel" else lib.PYVMM_IRQCHIP_SPLIT
    with Kvm() as kvm, kvm.create_vm(spec=ffi.new("struct pyvmm_vm_spec *", {
            "irqchip": mode, "split_pins": 24})) as vm:
        for i in range(2):
            reset, keep = reset_state(i, kvm.get_supported_cpuid, 2, lapic=True)
            vm.create_vcpu(i, reset)
            assert lapic_page(keep) == remembered[i]


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_native_creations_undo_what_they_made_when_a_step_fails():
    """pyvmm_vm_create, pyvmm_ram_add and pyvmm_vcpu_create (cbindings/setup.c) name the
    step that failed and leave no fd and no mapping behind."""
    from pyvmm.kvm.hostmem import HostMapping
    from pyvmm.kvm.native import ffi

    with Kvm() as kvm:
        before = _fds()
        spec = ffi.new("struct pyvmm_vm_spec *", {"irqchip": lib.PYVMM_IRQCHIP_SPLIT,
                                                  "split_pins": 100000})  # KVM: at most 48
        with pytest.raises(KvmError) as e:
            kvm.create_vm(spec=spec)
        assert (e.value.ioctl, e.value.errno) == ("KVM_ENABLE_CAP", 22) and _fds() == before
        with kvm.create_vm(spec=ffi.new("struct pyvmm_vm_spec *")) as vm:
            before = _fds()
            with pytest.raises(KvmError) as e:  # a flag KVM does not know
                HostMapping(1 << 20, slot=(vm.fd, 0, 0, 1 << 30))
            assert e.value.ioctl == "KVM_SET_USER_MEMORY_REGION" and _fds() == before
            vm.create_vcpu(0)
            before = _fds()
            with pytest.raises(KvmError, match="already exists"):
                vm.create_vcpu(0)
            assert _fds() == before
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": 1000, "entries": 1})  # KVM: <= 256
            reset = ffi.new("struct pyvmm_reset *", {"cpuid": cpuid, "msrs": ffi.NULL})
            with pytest.raises(KvmError) as e:  # the vCPU is made, its reset refused
                vm.create_vcpu(1, reset)
            assert (e.value.ioctl, e.value.errno) == ("KVM_SET_CPUID2", 7) and _fds() == before
            assert len(vm.vcpus) == 1


def test_vm_ioctls(vm):
    vm.create_pit2()
    assert vm.check_extension(lib.KVM_CAP_IRQCHIP)
    assert vm.irq_line(4, 1) is not None
    vm.irq_line(4, 0)
    efd = os.eventfd(0)
    try:
        vm.ioeventfd(efd, 0x600, 2, pio=True)
        vm.ioeventfd(efd, 0x600, 2, pio=True, deassign=True)
        vm.irqfd(efd, 10)
        vm.irqfd(efd, 10, deassign=True)
    finally:
        os.close(efd)
    stats = vm.get_stats_fd()
    try:
        assert stats.id.startswith("kvm-") and "remote_tlb_flush" in stats.read()
    finally:
        stats.close()


def test_dirty_log_shows_exactly_the_pages_written(guests):
    with Machine.from_elf(guests / "selftest.elf", cmdline="touch 0x20002000 3") as m:
        region = m.add_ram(0x20000000, 16 * 4096, log_dirty=True, name="logged")
        assert m.memory.dirty_pages(region) == []
        m.memory.write(0x2000F000, b"x")  # host writes are not logged: only the guest's
        r = m.run(timeout=30)
        assert r.ok
        assert m.memory.dirty_pages(region) == [0x20002000, 0x20003000, 0x20004000]
        assert m.memory.dirty_pages(region) == []  # reading the log cleared it


def test_sync_regs_show_the_exit_state(guests):
    with Machine.from_elf(guests / "selftest.elf", cmdline="exit 3") as m:
        r = m.run(timeout=30)
        regs = m.vcpus[0].sync_regs.regs
        assert regs.rax == 3  # the value the guest wrote with OUT
        assert m.image.symbols.lookup(regs.rip).startswith(("do_exit_sized", "main"))
    assert r.exit_code == 3


def test_leak_1000_create_destroy_cycles():
    def fds():
        return len(os.listdir("/proc/self/fd"))

    def rss_kib():
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    for _ in range(20):  # warm up allocator caches
        Machine(mem="2M").close()
    gc.collect()  # objects other tests left for the collector close their fds now, not later
    fd0, rss0 = fds(), rss_kib()
    for _ in range(1000):
        with Machine(mem="2M"):
            pass
    assert fds() == fd0
    assert rss_kib() - rss0 < 8 * 1024, "RSS grew by more than 8 MiB over 1000 cycles"


def _ram_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("pyvmm-ram" in line for line in f)


def test_machine_create_undoes_everything_when_a_step_fails():
    """pyvmm_machine_create (the VM, its RAM and vCPUs in one native call) names the step
    and the object it failed at, and leaves no fd and no mapping of what it made before."""
    from pyvmm import hardware
    from pyvmm.kvm.native import ffi

    with Kvm() as kvm:
        resets = hardware.vcpu_resets(kvm, 2, "split", "")
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": 1000, "entries": 1})  # KVM: <= 256
        bad = ffi.new("struct pyvmm_reset *", {"cpuid": cpuid, "msrs": ffi.NULL})
        before = _fds(), _ram_maps()
        with pytest.raises(KvmError) as e:  # vCPU 1's reset refused: vCPU 0, RAM and VM go
            hardware.create_machine(kvm, 2, "split", False, 8 << 20, [resets[0], (bad, resets[1][1])])
        assert (e.value.ioctl, e.value.errno) == ("KVM_SET_CPUID2", 7)
        assert (_fds(), _ram_maps()) == before
        spec = ffi.new("struct pyvmm_machine_spec *", {
            "nram": 2, "ram_gpa": [0, 0x12345], "ram_size": [1 << 20, 1 << 20], "ncpus": 1,
            "run_size": kvm.vcpu_mmap_size})
        made = ffi.new("struct pyvmm_machine *")
        assert lib.pyvmm_machine_create(kvm.fd, spec, made) == -1  # the second memslot
        assert (made.step, made.err, made.index) == (lib.PYVMM_STEP_SET_USER_MEMORY_REGION, 22, 1)
        assert (_fds(), _ram_maps()) == before  # the first range unmapped, its memfd closed
        spec.ncpus = 65
        assert lib.pyvmm_machine_create(kvm.fd, spec, made) == -1
        assert (made.step, made.err) == (lib.PYVMM_STEP_MACHINE_SPEC, 22)
        vm, memory, vcpus = hardware.create_machine(kvm, 2, "split", False, 8 << 20, resets)
        assert [v.id for v in vcpus] == [0, 1] and vm.vcpus == vcpus
        assert all(v.kvm_run.kvm_valid_regs == lib.KVM_SYNC_X86_REGS for v in vcpus)
        assert [(r.slot, r.gpa, r.size, r.name) for r in memory.regions] == [(0, 0, 8 << 20, "ram")]
        hardware.close(None, vm, memory, None)
        assert (_fds(), _ram_maps()) == before


def test_a_signal_while_a_machine_is_adopted_closes_each_thing_once(monkeypatch):
    # (review: the unwinding closed every RAM range a second time after memory.close(),
    # so the user got EBADF instead of the KeyboardInterrupt, or another fd was closed)
    from pyvmm import hardware
    from pyvmm.kvm.vm import Vm

    holder = []
    real_close = hardware.GuestMemory.close

    def close_and_reuse(self):
        real_close(self)
        holder.append(os.open("/dev/null", os.O_RDONLY))  # takes a freed number

    def interrupted(self, *args):
        raise KeyboardInterrupt  # a signal while the vCPUs are adopted

    with Kvm() as kvm:
        resets = hardware.vcpu_resets(kvm, 2, "split", "")
        before = _fds(), _ram_maps()
        monkeypatch.setattr(Vm, "adopt_vcpu", interrupted)
        monkeypatch.setattr(hardware.GuestMemory, "close", close_and_reuse)
        with pytest.raises(KeyboardInterrupt):
            hardware.create_machine(kvm, 2, "split", False, 64 << 20, resets)
        os.fstat(holder[0])  # still open: nobody closed what took the memfd's number
        os.close(holder[0])
        assert (_fds(), _ram_maps()) == before


def test_a_run_on_a_thread_threading_did_not_start_is_mapped_to_its_own_tid(guests):
    # (review: 3.11 keeps dummy Thread objects, and a reused pthread gets an earlier
    # thread's object and TID: kvmtrace would map KVM's events to the wrong vCPU thread)
    import _thread
    import threading
    import time

    from pyvmm.vstate.loop import _native_id

    out = []
    for _ in range(3):
        done = threading.Event()

        def note(done=done):
            out.append((_native_id(), threading.get_native_id()))
            done.set()

        _thread.start_new_thread(note, ())
        assert done.wait(10)
        time.sleep(0.05)
    assert all(got == real for got, real in out)


@pytest.mark.parametrize("how", ["vcpu_loop", "run", "python_loop", "unrun", "multiboot"])
def test_a_closed_machine_goes_by_reference_counting(guests, how):
    # no reference cycle through a closed machine: it and its devices are freed when the
    # last reference goes, not by the cycle collector (which ran every ~14 machines, a
    # pause each time, and a gen-2 pass now and then over every object of the process)
    import weakref

    gc.collect()
    gc.disable()
    try:
        machine = (Machine.from_multiboot(guests / "hello.flat") if how == "multiboot"  # PC
                   else Machine.from_elf(guests / "hello.elf", irqchip="split"))
        with machine as m:
            if how == "vcpu_loop":
                m.vcpu_loop(0).run()
            elif how != "unrun":
                assert m.run(timeout=30, python_loop=how == "python_loop").ok
            refs = [weakref.ref(o) for o in (m, m.bus, m.uart, m.ucall, m.post, m.memory, m.pc)
                    if o is not None]
        del m, machine
        assert [r() for r in refs] == [None] * len(refs)
    finally:
        gc.enable()
