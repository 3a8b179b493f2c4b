"""What kind of KVM this host has: module, MMU kind, and the capabilities pyvmm uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
USED_CAPS = ("IRQCHIP", "PIT2", "SYNC_REGS", "IMMEDIATE_EXIT", "READONLY_MEM",
             "BINARY_STATS_FD", "IOEVENTFD", "IRQFD", "COALESCED_MMIO", "COALESCED_PIO",
             "SET_GUEST_DEBUG", "XSAVE2", "XCRS", "MP_STATE", "VCPU_EVENTS", "TSC_DEADLINE_TIMER",
             "X2APIC_API", "X86_USER_SPACE_MSR", "X86_MSR_FILTER", "DIRTY_LOG_RING",
             "MANUAL_DIRTY_LOG_PROTECT2", "MAX_VCPUS", "NR_MEMSLOTS")


def _param(module: str, name: str, root: Path) -> str | None:
    p = root / module / "parameters" / name
    try:
        return p.read_text().strip()
    except OSError:
        return None


@dataclass(frozen=True)
class HostKvm:
    module: str  # kvm_intel, kvm_amd, kvm_pvm or "unknown"
    mmu: str  # "tdp-ept", "tdp-npt", "pvm-shadow", "shadow"
    tdp_mmu: bool

    @property
    def tdp(self) -> bool:
        """True when guest page faults go through two-dimensional paging (EPT/NPT), so
        pf_taken/pf_fixed move; False on shadow paging and kvm_pvm (HOST-KVM.md)."""
        return self.mmu.startswith("tdp")

    def describe(self) -> str:
        names = {"tdp-ept": "EPT (two-dimensional paging)", "tdp-npt": "NPT (two-dimensional paging)",
                 "pvm-shadow": "PVM: shadow paging, no EPT/NPT, CPL0 guest code emulated",
                 "shadow": "shadow paging (EPT/NPT off)"}
        return names[self.mmu] + (", TDP MMU" if self.tdp_mmu and self.tdp else "")


def detect(root: Path = Path("/sys/module")) -> HostKvm:
    """Read /sys/module: which vendor module is loaded and whether EPT/NPT is on."""
    loaded = [m for m in MODULES if (root / m).exists()]
    tdp_mmu = _param("kvm", "tdp_mmu", root) in ("Y", "1")
    if "kvm_pvm" in loaded:
        return HostKvm("kvm_pvm", "pvm-shadow", tdp_mmu)
    if "kvm_intel" in loaded:
        ept = _param("kvm_intel", "ept", root) in ("Y", "1")
        return HostKvm("kvm_intel", "tdp-ept" if ept else "shadow", tdp_mmu)
    if "kvm_amd" in loaded:
        npt = _param("kvm_amd", "npt", root) in ("Y", "1")
        return HostKvm("kvm_amd", "tdp-npt" if npt else "shadow", tdp_mmu)
    return HostKvm("unknown", "shadow", tdp_mmu)
