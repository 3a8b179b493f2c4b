"""``Vcpu``: a vCPU fd, its mmapped ``kvm_run`` and its ioctls (KVM API document, 4.x).

Every cffi struct a vCPU ioctl takes is built here, from Python values: callers pass
registers as keyword arguments or dicts and get cffi structs back only where they are the
natural view (sregs, events), which they may change and hand back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from pyvmm.kvm.errors import KvmError, step_error
from pyvmm.kvm.fd import FdObject
from pyvmm.kvm.native import Cdata, ffi, lib

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.kvm.stats import StatsReader

#: the general-purpose registers of ``struct kvm_regs``, in its order, then RIP and RFLAGS
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
REGS = (*GPRS, "rip", "rflags")
CPUID_FIELDS = ("function", "index", "flags", "eax", "ebx", "ecx", "edx")
#: KVM_SET_GUEST_DEBUG control bits
GUESTDBG_ENABLE = int(lib.KVM_GUESTDBG_ENABLE)
GUESTDBG_SINGLESTEP = int(lib.KVM_GUESTDBG_SINGLESTEP)
GUESTDBG_USE_SW_BP = int(lib.KVM_GUESTDBG_USE_SW_BP)
GUESTDBG_USE_HW_BP = int(lib.KVM_GUESTDBG_USE_HW_BP)
#: KVM_GET/SET_MP_STATE values
MP_STATE_RUNNABLE = int(lib.KVM_MP_STATE_RUNNABLE)
MP_STATE_UNINITIALIZED = int(lib.KVM_MP_STATE_UNINITIALIZED)
MP_STATE_HALTED = int(lib.KVM_MP_STATE_HALTED)
#: what each step number of the native set-up calls (cbindings/setup.h) did
STEPS = {int(getattr(lib, f"PYVMM_STEP_{name}")): f"KVM_{name}" for name in (
    "SET_CPUID2", "SET_MSRS", "SET_FPU", "GET_LAPIC", "SET_LAPIC", "GET_SREGS", "SET_SREGS",
    "SET_REGS", "CREATE_VM", "SET_TSS_ADDR", "SET_IDENTITY_MAP_ADDR", "CREATE_IRQCHIP",
    "CREATE_PIT2", "ENABLE_CAP", "CREATE_VCPU", "SET_USER_MEMORY_REGION")}
STEPS[int(lib.PYVMM_STEP_MMAP_RUN)] = "mmap kvm_run"
STEPS[int(lib.PYVMM_STEP_MACHINE_SPEC)] = "pyvmm_machine_create (more RAM ranges or vCPUs than it holds)"
STEPS.update({int(getattr(lib, f"PYVMM_STEP_{step}")): f"KVM_{name}" for step, name in (
    ("SET_SREGS_STATE", "SET_SREGS"), ("SET_REGS_STATE", "SET_REGS"), ("SET_XSAVE", "SET_XSAVE"),
    ("SET_FPU_STATE", "SET_FPU"), ("SET_XCRS", "SET_XCRS"), ("SET_DEBUGREGS", "SET_DEBUGREGS"),
    ("SET_LAPIC_STATE", "SET_LAPIC"), ("SET_MSRS_STATE", "SET_MSRS"),
    ("SET_VCPU_EVENTS", "SET_VCPU_EVENTS"), ("SET_MP_STATE", "SET_MP_STATE"))})


def cpuid_entry(e: Cdata) -> dict[str, int]:
    """A ``struct kvm_cpuid_entry2`` as a dict of its fields."""
    return {k: int(getattr(e, k)) for k in CPUID_FIELDS}


def msrs_struct(values: Mapping[int, int]) -> Cdata:
    """A ``struct kvm_msrs`` holding ``values`` in order, for :meth:`Vcpu.set_msrs`."""
    items = list(values.items())
    msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(items), "entries": len(items)})
    for i, (idx, val) in enumerate(items):
        msrs.entries[i].index = idx
        msrs.entries[i].data = val
    return msrs


def cpuid_struct(entries: Iterable[Mapping[str, int]]) -> Cdata:
    """A ``struct kvm_cpuid2`` holding ``entries`` (dicts of the entry fields)."""
    ents = [dict(e) for e in entries]
    return ffi.new("struct kvm_cpuid2 *", {"nent": len(ents), "entries": ents})


def xcrs_struct(xcrs: Mapping[int, int]) -> Cdata:
    """A ``struct kvm_xcrs`` for :meth:`Vcpu.set_xcrs`."""
    x = ffi.new("struct kvm_xcrs *")
    x.nr_xcrs = len(xcrs)
    for i, (k, v) in enumerate(xcrs.items()):
        x.xcrs[i].xcr = k
        x.xcrs[i].value = v
    return x


def lapic_struct(regs: bytes | bytearray) -> Cdata:
    """A ``struct kvm_lapic_state`` holding a saved register page."""
    st = ffi.new("struct kvm_lapic_state *")
    ffi.memmove(st.regs, regs, min(len(regs), ffi.sizeof(st.regs)))
    return st


def regs_struct(values: Mapping[str, int]) -> Cdata:
    """A ``struct kvm_regs`` from register names (RFLAGS 0x2 unless given)."""
    unknown = set(values) - set(REGS)
    if unknown:
        raise ValueError(f"not a register of struct kvm_regs: {', '.join(sorted(unknown))}")
    return ffi.new("struct kvm_regs *", {"rflags": 0x2, **values})


class Vcpu(FdObject, kind="vcpu"):
    """A vCPU made by :meth:`Vm.create_vcpu`.  Holds the fd and the shared ``kvm_run``
    mapping (``run_size`` bytes, from KVM_GET_VCPU_MMAP_SIZE); both go in :meth:`close`.
    ``xsave_size`` is the XSAVE area's size on this VM (KVM_CAP_XSAVE2)."""

    def __init__(self, fd: int, vcpu_id: int, run_size: int, xsave_size: int,
                 run: Cdata | None = None) -> None:
        """``run``: the kvm_run mapping when the caller made it (pyvmm_vcpu_create); this
        vCPU owns it from here on."""
        super().__init__(fd)
        self.id = vcpu_id
        self.run_size = run_size
        self.xsave_size = max(xsave_size, ffi.sizeof("struct kvm_xsave"))
        ptr = run
        if ptr is None:
            err = ffi.new("int *")
            ptr = lib.pyvmm_mmap(self.run_size, fd, 0, err)
            if ptr == ffi.NULL:
                self.close()
                raise KvmError("mmap kvm_run", err[0])
        self._run_ptr: Cdata = ptr
        #: the shared ``struct kvm_run`` (exit_reason, immediate_exit, ...)
        self.kvm_run: Cdata = ffi.cast("struct kvm_run *", ptr)

    # --- kvm_run ---------------------------------------------------------------
    def enable_sync_regs(self, mask: int = lib.KVM_SYNC_X86_REGS) -> None:
        """Ask KVM to publish registers in ``kvm_run->s.regs`` on every exit
        (KVM_CAP_SYNC_REGS): no ioctl is needed to read them at an exit."""
        self.kvm_run.kvm_valid_regs = mask

    @property
    def sync_regs(self) -> Cdata:
        """``kvm_run->s.regs`` (struct kvm_sync_regs), valid after an exit with sync regs on."""
        return lib.pyvmm_run_sync_regs(self.kvm_run)

    def run_once(self) -> int:
        """One KVM_RUN from Python (the run loops issue their own): 0, or the errno it
        failed with (no exception: with ``kvm_run.immediate_exit`` set it only completes a
        pending I/O instruction and EINTR is the expected answer)."""
        r = int(lib.pyvmm_ioctl(self._fd("KVM_RUN"), self.REQUESTS["KVM_RUN"], ffi.NULL))
        return -r if r < 0 else 0

    # --- several ioctls to a call (cbindings/setup.h) ------------------------------
    def reset(self, reset: Cdata) -> None:
        """KVM_SET_CPUID2, KVM_SET_MSRS, KVM_SET_FPU (with ``reset.fpu``) and, with
        ``reset.lapic``, KVM_GET_LAPIC (unless ``reset.lapic_known``), LINT0/LINT1 and
        KVM_SET_LAPIC (the page as set is left in ``reset.lapic``): one native call for a
        ``struct pyvmm_reset`` (:func:`pyvmm.x86.reset.reset_state`)."""
        err = ffi.new("int *")
        self._setup_failed(lib.pyvmm_vcpu_reset(self._fd("KVM_SET_CPUID2"), reset, err), err)

    def enter(self, mode: Cdata, regs: Cdata) -> None:
        """KVM_GET_SREGS, the fields a CPU mode decides taken from ``mode`` (a ``struct
        kvm_sregs``: CS-SS, GDT, IDT, CR0, CR3, CR4, EFER; TR, LDT and the APIC base stay
        as KVM has them), KVM_SET_SREGS, KVM_SET_REGS (``regs``): one native call."""
        err = ffi.new("int *")
        self._setup_failed(lib.pyvmm_vcpu_enter(self._fd("KVM_GET_SREGS"), mode, regs, err), err)

    def restore(self, state: Cdata) -> int:
        """A saved state (a ``struct pyvmm_vcpu_state``) put back in one native call:
        KVM_SET_SREGS, _REGS, _XSAVE (or _FPU), _XCRS, _DEBUGREGS, _LAPIC, _MSRS and, where
        KVM took every MSR, _VCPU_EVENTS and _MP_STATE.  Returns how many MSRs KVM took
        (fewer: the rest, the events and the MP state are the caller's)."""
        err, nmsrs = ffi.new("int *"), ffi.new("int *")
        self._setup_failed(lib.pyvmm_vcpu_restore(self._fd("KVM_SET_SREGS"), state, nmsrs, err), err)
        return int(nmsrs[0])

    @staticmethod
    def _setup_failed(step: int, err: Cdata) -> None:
        if step:
            raise step_error(step, int(err[0]), STEPS)

    # --- registers -------------------------------------------------------------
    def get_regs(self) -> dict[str, int]:
        """KVM_GET_REGS: general-purpose registers, RIP and RFLAGS, by name."""
        regs = ffi.new("struct kvm_regs *")
        self._ioctl("KVM_GET_REGS", regs)
        return {n: int(getattr(regs, n)) for n in REGS}

    def set_regs(self, values: Mapping[str, int] | Cdata | None = None, **kw: int) -> None:
        """KVM_SET_REGS: registers by name; those not given are 0 (RFLAGS: 0x2, its
        reserved bit, unless given).  ``values`` may be a struct from :func:`regs_struct`."""
        if values is not None and not isinstance(values, Mapping) and not kw:
            regs = values
        else:
            regs = regs_struct({**(values or {}), **kw})
        self._ioctl("KVM_SET_REGS", regs)

    def get_sregs(self) -> Cdata:
        """KVM_GET_SREGS: segments, descriptor tables, CR0-4/8, EFER, APIC base."""
        sregs = ffi.new("struct kvm_sregs *")
        self._ioctl("KVM_GET_SREGS", sregs)
        return sregs

    def set_sregs(self, sregs: Cdata) -> None:
        """KVM_SET_SREGS: KVM checks the CR/EFER combination and refuses invalid ones."""
        self._ioctl("KVM_SET_SREGS", sregs)

    def get_fpu(self) -> Cdata:
        """KVM_GET_FPU: x87 and SSE state (FCW, MXCSR, registers)."""
        fpu = ffi.new("struct kvm_fpu *")
        self._ioctl("KVM_GET_FPU", fpu)
        return fpu

    def set_fpu(self, fpu: Cdata | None = None, **fields: int) -> None:
        """KVM_SET_FPU: a struct from :meth:`get_fpu`, or fields by name (``fcw``,
        ``mxcsr``, ...) on a zeroed state."""
        self._ioctl("KVM_SET_FPU",
                    fpu if fpu is not None else ffi.new("struct kvm_fpu *", fields))

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS: read MSRs; KVM stops at the first it cannot read, and only the ones
        it read are returned."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for i, idx in enumerate(indices):
            msrs.entries[i].index = idx
        n = self._ioctl("KVM_GET_MSRS", msrs)
        return {int(msrs.entries[i].index): int(msrs.entries[i].data) for i in range(n)}

    def set_msrs(self, values: Mapping[int, int] | Cdata) -> int:
        """KVM_SET_MSRS: write MSRs in order; returns how many KVM accepted (it stops at the
        first refusal).  ``values`` may be a struct from :func:`msrs_struct`, built once
        for MSRs written again and again (snapshot restores)."""
        msrs = msrs_struct(values) if isinstance(values, Mapping) else values
        return self._ioctl("KVM_SET_MSRS", msrs)

    def set_cpuid2(self, entries: Iterable[Mapping[str, int]] | Cdata) -> None:
        """KVM_SET_CPUID2: the CPUID leaves the guest sees (on kvm_pvm the guest still sees
        host-like CPUID; see HOST-KVM.md).  ``entries`` may be a struct from
        :func:`cpuid_struct` (KVM copies it, so one struct serves many vCPUs)."""
        cpuid = entries if isinstance(entries, ffi.CData) else cpuid_struct(entries)
        self._ioctl("KVM_SET_CPUID2", cpuid)

    def get_cpuid2(self, max_entries: int = 256) -> list[dict[str, int]]:
        """KVM_GET_CPUID2: the leaves last set with KVM_SET_CPUID2."""
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
        self._ioctl("KVM_GET_CPUID2", cpuid)
        return [cpuid_entry(cpuid.entries[i]) for i in range(cpuid.nent)]

    def get_lapic(self) -> bytearray:
        """KVM_GET_LAPIC: the in-kernel LAPIC's 1 KiB register page."""
        st = ffi.new("struct kvm_lapic_state *")
        self._ioctl("KVM_GET_LAPIC", st)
        return bytearray(ffi.buffer(st.regs))

    def set_lapic(self, regs: bytes | bytearray | Cdata) -> None:
        """KVM_SET_LAPIC: the 1 KiB register page (bytes, or a ``struct kvm_lapic_state``)."""
        st = lapic_struct(regs) if isinstance(regs, bytes | bytearray) else regs
        self._ioctl("KVM_SET_LAPIC", st)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: RUNNABLE, UNINITIALIZED (AP waiting for INIT/SIPI), HALTED, ..."""
        st = ffi.new("struct kvm_mp_state *")
        self._ioctl("KVM_GET_MP_STATE", st)
        return int(st.mp_state)

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE."""
        st = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        self._ioctl("KVM_SET_MP_STATE", st)

    def get_vcpu_events(self) -> Cdata:
        """KVM_GET_VCPU_EVENTS: pending/injected exception, interrupt, NMI, SIPI vector."""
        ev = ffi.new("struct kvm_vcpu_events *")
        self._ioctl("KVM_GET_VCPU_EVENTS", ev)
        return ev

    def set_vcpu_events(self, events: Cdata) -> None:
        """KVM_SET_VCPU_EVENTS."""
        self._ioctl("KVM_SET_VCPU_EVENTS", events)

    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE2 (or KVM_GET_XSAVE): the guest's XSAVE area, at its full size."""
        size = self.xsave_size
        buf = ffi.new("uint8_t[]", size)
        if size > ffi.sizeof("struct kvm_xsave"):
            self._ioctl("KVM_GET_XSAVE2", buf)
        else:
            self._ioctl("KVM_GET_XSAVE", buf)
        return bytes(ffi.buffer(buf, size))

    def xsave_buffer(self, area: bytes | bytearray) -> Cdata:
        """``area`` in a buffer KVM_SET_XSAVE can take (at least this VM's XSAVE size)."""
        buf = ffi.new("uint8_t[]", max(self.xsave_size, len(area)))
        ffi.memmove(buf, area, len(area))
        return buf

    def set_xsave(self, area: bytes | Cdata) -> None:
        """KVM_SET_XSAVE: KVM reads as many bytes as KVM_CAP_XSAVE2 says.  ``area`` may be
        a buffer from :meth:`xsave_buffer`, built once."""
        buf = self.xsave_buffer(area) if isinstance(area, bytes | bytearray) else area
        self._ioctl("KVM_SET_XSAVE", buf)

    def get_xcrs(self) -> dict[int, int]:
        """KVM_GET_XCRS: extended control registers (XCR0)."""
        x = ffi.new("struct kvm_xcrs *")
        self._ioctl("KVM_GET_XCRS", x)
        return {int(x.xcrs[i].xcr): int(x.xcrs[i].value) for i in range(x.nr_xcrs)}

    def set_xcrs(self, xcrs: Mapping[int, int] | Cdata) -> None:
        """KVM_SET_XCRS (a mapping, or a ``struct kvm_xcrs``)."""
        x = xcrs_struct(xcrs) if isinstance(xcrs, Mapping) else xcrs
        self._ioctl("KVM_SET_XCRS", x)

    def set_guest_debug(self, control: int, debugreg: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: single-step, hardware breakpoints (DR0-3, DR7 in slot 7)."""
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control
        for i, v in enumerate(debugreg[:8]):
            dbg.arch.debugreg[i] = v
        self._ioctl("KVM_SET_GUEST_DEBUG", dbg)

    def get_debugregs(self) -> Cdata:
        """KVM_GET_DEBUGREGS: the guest's own DR0-3, DR6, DR7 (not the debugger's)."""
        dr = ffi.new("struct kvm_debugregs *")
        self._ioctl("KVM_GET_DEBUGREGS", dr)
        return dr

    def set_debugregs(self, dr: Cdata) -> None:
        """KVM_SET_DEBUGREGS."""
        self._ioctl("KVM_SET_DEBUGREGS", dr)

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency."""
        return self._ioctl("KVM_GET_TSC_KHZ")

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: guest-virtual to guest-physical through the guest's page tables,
        or None when not mapped."""
        tr = ffi.new("struct kvm_translation *", {"linear_address": linear})
        self._ioctl("KVM_TRANSLATE", tr)
        return int(tr.physical_address) if tr.valid else None

    def get_stats_fd(self) -> StatsReader:
        """KVM_GET_STATS_FD: this vCPU's statistics (exits, insn_emulation, halt_*, pf_*)."""
        from pyvmm.kvm.stats import StatsReader  # only machines that read stats load it

        return StatsReader(self._ioctl("KVM_GET_STATS_FD"))

    def close(self) -> None:
        if getattr(self, "_run_ptr", None) is not None:
            lib.pyvmm_munmap(self._run_ptr, self.run_size)
            self._run_ptr = None
            self.kvm_run = None
        super().close()
