"""The CPUID table each vCPU gets: KVM_GET_SUPPORTED_CPUID with the per-vCPU fields set.

On kvm_pvm the guest sees host-like CPUID whatever we set (HOST-KVM.md), but the APIC
IDs still have to be right for VMX/SVM hosts, where this table is what the guest sees.
"""

from __future__ import annotations

from collections.abc import Iterable

HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX[31]
X2APIC_LEAVES = (0xB, 0x1F)


def vcpu_cpuid(supported: Iterable[dict[str, int]], apic_id: int, ncpus: int) -> list[dict[str, int]]:
    """A copy of ``supported`` for vCPU ``apic_id`` of ``ncpus``."""
    out = []
    for leaf in supported:
        e = dict(leaf)
        fn = e["function"]
        if fn == 1:
            # EBX[31:24] initial APIC ID, EBX[23:16] logical processors per package
            e["ebx"] = (e["ebx"] & 0x0000FFFF) | (apic_id << 24) | (min(ncpus, 255) << 16)
            e["ecx"] |= HYPERVISOR_BIT
            if ncpus > 1:
                e["edx"] |= 1 << 28  # HTT: the logical-processor count is valid
        elif fn in X2APIC_LEAVES:
            e["edx"] = apic_id  # x2APIC ID of this logical processor
        out.append(e)
    return out
