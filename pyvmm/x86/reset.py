"""The state every vCPU gets before its guest starts: what firmware would have left.

CPUID with the per-vCPU fields (APIC IDs), the MSRs' reset values and the LAPIC's
LINT0/LINT1 in virtual-wire mode (ExtINT, NMI).  The x87/SSE state is KVM's own: a new vCPU already has the
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

LVT_EXTINT = 0x700
LVT_NMI = 0x400


#: prepared KVM_SET_CPUID2 arguments per (/dev/kvm path, vCPU, vCPU count, features):
#: machines are created by the thousand, and building the struct costs more than the
#: ioctl; KVM copies it, so one serves every machine
_CPUID_CACHE: dict[tuple[str, int, int, tuple[tuple[str, bool], ...]], Any] = {}
#: the MSRs' reset values as KVM_SET_MSRS takes them: the same for every vCPU, built at
#: the first (KVM copies them, never writes them)
_MSRS: list[Any] = []
#: the LAPIC page a new vCPU had after KVM_SET_CPUID2, per _CPUID_CACHE key and irqchip
#: mode (KVM's reset state: the vCPU's APIC ID, a version register the CPUID and the
#: irqchip decide, every LVT masked), so that later vCPUs skip KVM_GET_LAPIC
_LAPIC_PAGES: dict[tuple[object, ...], bytes] = {}


def reset_state(vcpu_id: int, supported_cpuid: Callable[[], Sequence[dict[str, int]]],
                ncpus: int, *, lapic: bool, features: Mapping[str, bool] | None = None,
                kvm_path: str = "", irqchip: str = "",
                ) -> tuple[Any, tuple[Any, tuple[object, ...] | None, Any]]:
    """What vCPU ``vcpu_id`` of ``ncpus`` gets before its guest starts, as the ``struct
    pyvmm_reset`` that :meth:`pyvmm.kvm.vm.Vm.create_vcpu` (or
    :meth:`pyvmm.kvm.vcpu.Vcpu.reset`) applies in one native call: CPUID
    (``supported_cpuid()``'s leaves with ``features`` set or cleared), the MSRs and (``lapic``:
    the VM has an in-kernel LAPIC) LINT0/LINT1 in virtual-wire mode, as firmware leaves
    them.  Returns the struct and what it points to, which must live as long as the struct
    is used (keep the pair together): for :func:`lapic_page`, the ``struct
    kvm_lapic_state`` (None without a LAPIC: it receives the page as set), the key its page
    is remembered by, and the CPUID struct.  With ``kvm_path`` and
    ``irqchip``, a vCPU like one reset before (same id, CPUID and irqchip mode) gets KVM's
    reset page from memory instead of a KVM_GET_LAPIC."""
    feats = tuple(sorted((features or {}).items()))
    key = (kvm_path, vcpu_id, ncpus, feats)
    cpuid = _CPUID_CACHE.get(key) if kvm_path else None
    if cpuid is None:
        cpuid = cpuid_struct(vcpu_cpuid(supported_cpuid(), vcpu_id, ncpus, dict(feats)))
        if kvm_path:
            _CPUID_CACHE[key] = cpuid
    if not _MSRS:
        _MSRS.append(msrs_struct(RESET_MSRS))
    page, page_key, known = None, None, None
    if lapic:
        page = ffi.new("struct kvm_lapic_state *")
        page_key = (*key, irqchip) if kvm_path and irqchip else None
        known = _LAPIC_PAGES.get(page_key) if page_key is not None else None
        if known is not None:
            ffi.memmove(page.regs, known, len(known))
    reset = ffi.new("struct pyvmm_reset *", {
        "cpuid": cpuid, "msrs": _MSRS[0], "fpu": ffi.NULL,
        "lapic": ffi.NULL if page is None else page, "lint0": LVT_EXTINT, "lint1": LVT_NMI,
        "lapic_known": int(known is not None)})
    # the struct only points at the CPUID and the page: their owners go with it
    return reset, (page, None if known is not None else page_key, cpuid)


def lapic_page(page: tuple[Any, tuple[object, ...] | None, Any]) -> bytes | None:
    """The LAPIC register page a reset left (kept for a reset at S3 resume), or None
    without a LAPIC; the first of its kind is remembered for the vCPUs like it."""
    cdata, key, _ = page
    if cdata is None:
        return None
    regs: bytes = ffi.buffer(cdata.regs)[:]
    if key is not None:
        _LAPIC_PAGES[key] = regs  # KVM's reset page: the LINT values are set again anyway
    return regs
