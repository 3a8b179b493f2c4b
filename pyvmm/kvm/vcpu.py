"""``Vcpu``: a vCPU fd, its mmapped ``kvm_run`` and its ioctls."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pyvmm._native import ffi, lib
from pyvmm.kvm.errors import KvmError
from pyvmm.kvm.fd import FdObject
from pyvmm.kvm.stats import StatsReader

if TYPE_CHECKING:
    from pyvmm.kvm.vm import Vm

#: ``kvm_run->kvm_valid_regs`` value that makes KVM fill regs, sregs and events on every
#: exit, so reading guest registers costs no ioctl (KVM_CAP_SYNC_REGS).
SYNC_ALL = lib.KVM_SYNC_X86_REGS | lib.KVM_SYNC_X86_SREGS | lib.KVM_SYNC_X86_EVENTS

Cdata = Any  # a cffi struct; cffi has no static types


class Vcpu(FdObject):
    """A vCPU.  Holds the fd and the shared ``kvm_run`` mapping; both go in :meth:`close`."""

    def __init__(self, fd: int, vcpu_id: int, vm: Vm) -> None:
        super().__init__(fd)
        self.id = vcpu_id
        self.vm = vm
        self.run_size = vm.kvm.get_vcpu_mmap_size()
        err = ffi.new("int *")
        ptr = lib.pyvmm_mmap(self.run_size, fd, 0, err)
        if ptr == ffi.NULL:
            self.close()
            raise KvmError("mmap kvm_run", err[0])
        self._run_ptr = ptr
        #: the shared ``struct kvm_run`` (exit_reason, immediate_exit, ...)
        self.kvm_run: Cdata = ffi.cast("struct kvm_run *", ptr)

    # --- running ---------------------------------------------------------------
    def run(self) -> int:
        """KVM_RUN once (GIL released).  Returns 0, or raises KvmError (EINTR on a kick)."""
        return self._ioctl("KVM_RUN", lib.KVM_RUN)

    def enable_sync_regs(self, mask: int = SYNC_ALL) -> None:
        """Ask KVM to publish registers in ``kvm_run->s.regs`` on every exit
        (KVM_CAP_SYNC_REGS): one ioctl fewer per register read."""
        self.kvm_run.kvm_valid_regs = mask

    @property
    def sync_regs(self) -> Cdata:
        """``kvm_run->s.regs`` (struct kvm_sync_regs), valid after an exit with sync regs on.
        Write to it and call :meth:`mark_sync_dirty` to hand changes back to KVM."""
        return lib.pyvmm_run_sync_regs(self.kvm_run)

    def mark_sync_dirty(self, mask: int = lib.KVM_SYNC_X86_REGS) -> None:
        self.kvm_run.kvm_dirty_regs |= mask

    # --- registers -------------------------------------------------------------
    def get_regs(self) -> Cdata:
        """KVM_GET_REGS: general-purpose registers, RIP and RFLAGS."""
        regs = ffi.new("struct kvm_regs *")
        self._ioctl("KVM_GET_REGS", lib.KVM_GET_REGS, regs)
        return regs

    def set_regs(self, regs: Cdata) -> None:
        """KVM_SET_REGS."""
        self._ioctl("KVM_SET_REGS", lib.KVM_SET_REGS, regs)

    def get_sregs(self) -> Cdata:
        """KVM_GET_SREGS: segments, descriptor tables, CR0-4/8, EFER, APIC base."""
        sregs = ffi.new("struct kvm_sregs *")
        self._ioctl("KVM_GET_SREGS", lib.KVM_GET_SREGS, sregs)
        return sregs

    def set_sregs(self, sregs: Cdata) -> None:
        """KVM_SET_SREGS: KVM checks the CR/EFER combination and refuses invalid ones."""
        self._ioctl("KVM_SET_SREGS", lib.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> Cdata:
        """KVM_GET_FPU: x87 and SSE state (FCW, MXCSR, registers)."""
        fpu = ffi.new("struct kvm_fpu *")
        self._ioctl("KVM_GET_FPU", lib.KVM_GET_FPU, fpu)
        return fpu

    def set_fpu(self, fpu: Cdata) -> None:
        """KVM_SET_FPU."""
        self._ioctl("KVM_SET_FPU", lib.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: Sequence[int]) -> dict[int, int]:
        """KVM_GET_MSRS: read MSRs; KVM stops at the first it cannot read, and only the ones
        it read are returned."""
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        for i, idx in enumerate(indices):
            msrs.entries[i].index = idx
        n = self._ioctl("KVM_GET_MSRS", lib.KVM_GET_MSRS, msrs)
        return {msrs.entries[i].index: msrs.entries[i].data for i in range(n)}

    def set_msrs(self, values: Mapping[int, int]) -> int:
        """KVM_SET_MSRS: write MSRs in order; returns how many KVM accepted (it stops at the
        first refusal)."""
        items = list(values.items())
        msrs = ffi.new("struct kvm_msrs *", {"nmsrs": len(items), "entries": len(items)})
        for i, (idx, val) in enumerate(items):
            msrs.entries[i].index = idx
            msrs.entries[i].data = val
        return self._ioctl("KVM_SET_MSRS", lib.KVM_SET_MSRS, msrs)

    def set_cpuid2(self, entries: Iterable[Mapping[str, int]]) -> None:
        """KVM_SET_CPUID2: the CPUID leaves the guest sees (on kvm_pvm the guest still sees
        host-like CPUID; see HOST-KVM.md)."""
        ents = [dict(e) for e in entries]
        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": len(ents), "entries": ents})
        self._ioctl("KVM_SET_CPUID2", lib.KVM_SET_CPUID2, cpuid)

    def get_cpuid2(self, max_entries: int = 256) -> list[dict[str, int]]:
        """KVM_GET_CPUID2: the leaves last set with KVM_SET_CPUID2."""
        from pyvmm.kvm.system import _cpuid_entry

        cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
        self._ioctl("KVM_GET_CPUID2", lib.KVM_GET_CPUID2, cpuid)
        return [_cpuid_entry(cpuid.entries[i]) for i in range(cpuid.nent)]

    def get_lapic(self) -> bytearray:
        """KVM_GET_LAPIC: the in-kernel LAPIC's 1 KiB register page."""
        st = ffi.new("struct kvm_lapic_state *")
        self._ioctl("KVM_GET_LAPIC", lib.KVM_GET_LAPIC, st)
        return bytearray(ffi.buffer(st.regs))

    def set_lapic(self, regs: bytes) -> None:
        """KVM_SET_LAPIC."""
        st = ffi.new("struct kvm_lapic_state *")
        ffi.memmove(st.regs, regs, min(len(regs), ffi.sizeof(st.regs)))
        self._ioctl("KVM_SET_LAPIC", lib.KVM_SET_LAPIC, st)

    def get_mp_state(self) -> int:
        """KVM_GET_MP_STATE: RUNNABLE, UNINITIALIZED (AP waiting for INIT/SIPI), HALTED, ..."""
        st = ffi.new("struct kvm_mp_state *")
        self._ioctl("KVM_GET_MP_STATE", lib.KVM_GET_MP_STATE, st)
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        """KVM_SET_MP_STATE."""
        st = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        self._ioctl("KVM_SET_MP_STATE", lib.KVM_SET_MP_STATE, st)

    def get_vcpu_events(self) -> Cdata:
        """KVM_GET_VCPU_EVENTS: pending/injected exception, interrupt, NMI, SIPI vector."""
        ev = ffi.new("struct kvm_vcpu_events *")
        self._ioctl("KVM_GET_VCPU_EVENTS", lib.KVM_GET_VCPU_EVENTS, ev)
        return ev

    def set_vcpu_events(self, events: Cdata) -> None:
        """KVM_SET_VCPU_EVENTS."""
        self._ioctl("KVM_SET_VCPU_EVENTS", lib.KVM_SET_VCPU_EVENTS, events)

    def _xsave_size(self) -> int:
        return max(self.vm.check_extension(lib.KVM_CAP_XSAVE2), ffi.sizeof("struct kvm_xsave"))

    def get_xsave(self) -> bytes:
        """KVM_GET_XSAVE2 (or KVM_GET_XSAVE): the guest's XSAVE area, at its full size."""
        size = self._xsave_size()
        buf = ffi.new("uint8_t[]", size)
        if size > ffi.sizeof("struct kvm_xsave"):
            self._ioctl("KVM_GET_XSAVE2", lib.KVM_GET_XSAVE2, buf)
        else:
            self._ioctl("KVM_GET_XSAVE", lib.KVM_GET_XSAVE, buf)
        return bytes(ffi.buffer(buf, size))

    def set_xsave(self, area: bytes) -> None:
        """KVM_SET_XSAVE: KVM reads as many bytes as KVM_CAP_XSAVE2 says."""
        size = max(self._xsave_size(), len(area))
        buf = ffi.new("uint8_t[]", size)
        ffi.memmove(buf, area, len(area))
        self._ioctl("KVM_SET_XSAVE", lib.KVM_SET_XSAVE, buf)

    def get_xcrs(self) -> dict[int, int]:
        """KVM_GET_XCRS: extended control registers (XCR0)."""
        x = ffi.new("struct kvm_xcrs *")
        self._ioctl("KVM_GET_XCRS", lib.KVM_GET_XCRS, x)
        return {x.xcrs[i].xcr: x.xcrs[i].value for i in range(x.nr_xcrs)}

    def set_xcrs(self, xcrs: Mapping[int, int]) -> None:
        """KVM_SET_XCRS."""
        x = ffi.new("struct kvm_xcrs *")
        x.nr_xcrs = len(xcrs)
        for i, (k, v) in enumerate(xcrs.items()):
            x.xcrs[i].xcr = k
            x.xcrs[i].value = v
        self._ioctl("KVM_SET_XCRS", lib.KVM_SET_XCRS, x)

    def set_guest_debug(self, control: int, debugreg: Sequence[int] = ()) -> None:
        """KVM_SET_GUEST_DEBUG: single-step, hardware breakpoints (DR0-3, DR7 in slot 7)."""
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control
        for i, v in enumerate(debugreg[:8]):
            dbg.arch.debugreg[i] = v
        self._ioctl("KVM_SET_GUEST_DEBUG", lib.KVM_SET_GUEST_DEBUG, dbg)

    def get_tsc_khz(self) -> int:
        """KVM_GET_TSC_KHZ: the guest TSC frequency."""
        return self._ioctl("KVM_GET_TSC_KHZ", lib.KVM_GET_TSC_KHZ)

    def translate(self, linear: int) -> int | None:
        """KVM_TRANSLATE: guest-virtual to guest-physical through the guest's page tables,
        or None when not mapped."""
        tr = ffi.new("struct kvm_translation *", {"linear_address": linear})
        self._ioctl("KVM_TRANSLATE", lib.KVM_TRANSLATE, tr)
        return tr.physical_address if tr.valid else None

    def get_stats_fd(self) -> StatsReader:
        """KVM_GET_STATS_FD: this vCPU's statistics (exits, insn_emulation, halt_*, pf_*)."""
        return StatsReader(self._ioctl("KVM_GET_STATS_FD", lib.KVM_GET_STATS_FD))

    def close(self) -> None:
        if getattr(self, "_run_ptr", None) is not None:
            lib.pyvmm_munmap(self._run_ptr, self.run_size)
            self._run_ptr = None
            self.kvm_run = None
        super().close()
