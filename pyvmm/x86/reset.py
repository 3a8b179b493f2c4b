"""The state every vCPU gets before its guest starts: what firmware would have left.

CPUID with the per-vCPU fields (APIC IDs), the MSRs' reset values, the x87/SSE reset
state, the LAPIC's LINT0/LINT1 in virtual-wire mode (ExtINT, NMI), and KVM's publishing of
the GPRs in ``kvm_run`` at every exit (KVM_CAP_SYNC_REGS).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from pyvmm.kvm.vcpu import FPU_RESET
from pyvmm.x86.cpuid import vcpu_cpuid
from pyvmm.x86.msrs import RESET_MSRS

if TYPE_CHECKING:
    from pyvmm.kvm.vcpu import Vcpu

APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
LVT_EXTINT = 0x700
LVT_NMI = 0x400


def reset_vcpu(vcpu: Vcpu, supported_cpuid: Sequence[dict[str, int]], ncpus: int, *,
               lapic: bool, features: Mapping[str, bool] | None = None) -> bytes | None:
    """CPUID (with ``features`` set or cleared), MSRs, FPU and (``lapic``: the VM has an
    in-kernel LAPIC) LINT0/LINT1.  Returns the LAPIC's register page as set (kept for a
    reset at S3 resume), None without a LAPIC."""
    vcpu.set_cpuid2(vcpu_cpuid(supported_cpuid, vcpu.id, ncpus, features or {}))
    vcpu.set_msrs(RESET_MSRS)
    vcpu.set_fpu(**FPU_RESET)
    if lapic:
        regs = vcpu.get_lapic()  # virtual-wire mode, as firmware leaves it
        regs[APIC_LVT_LINT0:APIC_LVT_LINT0 + 4] = LVT_EXTINT.to_bytes(4, "little")
        regs[APIC_LVT_LINT1:APIC_LVT_LINT1 + 4] = LVT_NMI.to_bytes(4, "little")
        vcpu.set_lapic(bytes(regs))
    # GPRs and RIP in kvm_run on every exit for free; sregs/events too would cost
    # ~0.3 us per exit here (measured), so those are read by ioctl when needed
    vcpu.enable_sync_regs()
    return bytes(regs) if lapic else None
