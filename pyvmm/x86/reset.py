"""The state every vCPU gets before its guest starts: what firmware would have left.

CPUID with the per-vCPU fields (APIC IDs), the MSRs' reset values, the LAPIC's LINT0/LINT1
in virtual-wire mode (ExtINT, NMI), and KVM's publishing of the GPRs in ``kvm_run`` at every
exit (KVM_CAP_SYNC_REGS).  The x87/SSE state is KVM's own: a new vCPU already has the
power-up FCW 0x37F and MXCSR 0x1F80 (and KVM_SET_FPU would leave MXCSR alone anyway).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from pyvmm.kvm.native import ffi
from pyvmm.kvm.vcpu import cpuid_struct, msrs_struct
from pyvmm.x86.cpuid import vcpu_cpuid
from pyvmm.x86.msrs import RESET_MSRS

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

    from pyvmm.kvm.vcpu import Vcpu

LVT_EXTINT = 0x700
LVT_NMI = 0x400


#: prepared KVM_SET_CPUID2 arguments per (/dev/kvm path, vCPU, vCPU count, features):
#: machines are created by the thousand, and building the struct costs more than the
#: ioctl; KVM copies it, so one serves every machine
_CPUID_CACHE: dict[tuple[str, int, int, tuple[tuple[str, bool], ...]], Any] = {}
#: the MSRs' reset values as KVM_SET_MSRS takes them: the same for every vCPU, built at
#: the first (KVM copies them, never writes them)
_MSRS: list[Any] = []


def reset_vcpu(vcpu: Vcpu, supported_cpuid: Callable[[], Sequence[dict[str, int]]], ncpus: int,
               *, lapic: bool, features: Mapping[str, bool] | None = None,
               kvm_path: str = "") -> bytes | None:
    """CPUID (``supported_cpuid()``'s leaves with ``features`` set or cleared), MSRs and
    (``lapic``: the VM has an in-kernel LAPIC) LINT0/LINT1.  Returns the LAPIC's register
    page as set (kept for a reset at S3 resume), None without a LAPIC."""
    feats = tuple(sorted((features or {}).items()))
    key = (kvm_path, vcpu.id, ncpus, feats)
    cpuid = _CPUID_CACHE.get(key) if kvm_path else None
    if cpuid is None:
        cpuid = cpuid_struct(vcpu_cpuid(supported_cpuid(), vcpu.id, ncpus, dict(feats)))
        if kvm_path:
            _CPUID_CACHE[key] = cpuid
    if not _MSRS:
        _MSRS.append(msrs_struct(RESET_MSRS))
    page = ffi.new("struct kvm_lapic_state *") if lapic else ffi.NULL
    # virtual-wire mode, as firmware leaves the LAPIC; one native call for the four ioctls
    vcpu.reset(ffi.new("struct pyvmm_reset *", {
        "cpuid": cpuid, "msrs": _MSRS[0], "fpu": ffi.NULL, "lapic": page,
        "lint0": LVT_EXTINT, "lint1": LVT_NMI}))
    # GPRs and RIP in kvm_run on every exit for free; sregs/events too would cost
    # ~0.3 us per exit here (measured), so those are read by ioctl when needed
    vcpu.enable_sync_regs()
    return ffi.buffer(page.regs)[:] if lapic else None
