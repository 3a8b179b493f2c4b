"""The CPUID table each vCPU gets: KVM_GET_SUPPORTED_CPUID with the per-vCPU fields set, the
host's brand string (as QEMU's ``-cpu host``), and features added or hidden by name (as
QEMU's ``-cpu MODEL,+flag,-flag``).

Whether the guest sees the table is the host's business: VMX/SVM KVM shows it as set; on
kvm_pvm some bits follow it and others stay host-like (``pyvmm doctor``'s ``set-cpuid``
probe tells which of the flags it tries).
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Mapping

from pyvmm.errors import ConfigError

HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX[31]
X2APIC_LEAVES = (0xB, 0x1F)
BRAND_LEAVES = (0x80000002, 0x80000003, 0x80000004)

#: QEMU's feature names -> (leaf, subleaf, register, bit) (Intel SDM vol. 2A, CPUID)
FEATURES: dict[str, tuple[int, int, str, int]] = {
    "sse3": (1, 0, "ecx", 0), "pclmulqdq": (1, 0, "ecx", 1), "monitor": (1, 0, "ecx", 3),
    "vmx": (1, 0, "ecx", 5), "ssse3": (1, 0, "ecx", 9), "fma": (1, 0, "ecx", 12),
    "cx16": (1, 0, "ecx", 13), "pdcm": (1, 0, "ecx", 15), "pcid": (1, 0, "ecx", 17),
    "sse4.1": (1, 0, "ecx", 19), "sse4.2": (1, 0, "ecx", 20), "x2apic": (1, 0, "ecx", 21),
    "movbe": (1, 0, "ecx", 22), "popcnt": (1, 0, "ecx", 23), "tsc-deadline": (1, 0, "ecx", 24),
    "aes": (1, 0, "ecx", 25), "xsave": (1, 0, "ecx", 26), "avx": (1, 0, "ecx", 28),
    "f16c": (1, 0, "ecx", 29), "rdrand": (1, 0, "ecx", 30), "hypervisor": (1, 0, "ecx", 31),
    "fpu": (1, 0, "edx", 0), "pse": (1, 0, "edx", 3), "tsc": (1, 0, "edx", 4),
    "msr": (1, 0, "edx", 5), "pae": (1, 0, "edx", 6), "apic": (1, 0, "edx", 9),
    "mtrr": (1, 0, "edx", 12), "pge": (1, 0, "edx", 13), "pat": (1, 0, "edx", 16),
    "pse36": (1, 0, "edx", 17), "clflush": (1, 0, "edx", 19), "sse": (1, 0, "edx", 25),
    "sse2": (1, 0, "edx", 26), "fsgsbase": (7, 0, "ebx", 0), "tsc-adjust": (7, 0, "ebx", 1),
    "bmi1": (7, 0, "ebx", 3), "hle": (7, 0, "ebx", 4), "avx2": (7, 0, "ebx", 5),
    "smep": (7, 0, "ebx", 7), "bmi2": (7, 0, "ebx", 8), "erms": (7, 0, "ebx", 9),
    "invpcid": (7, 0, "ebx", 10), "rtm": (7, 0, "ebx", 11), "mpx": (7, 0, "ebx", 14),
    "avx512f": (7, 0, "ebx", 16), "rdseed": (7, 0, "ebx", 18), "adx": (7, 0, "ebx", 19),
    "smap": (7, 0, "ebx", 20), "clflushopt": (7, 0, "ebx", 23), "umip": (7, 0, "ecx", 2),
    "pku": (7, 0, "ecx", 3), "la57": (7, 0, "ecx", 16), "rdpid": (7, 0, "ecx", 22),
    "spec-ctrl": (7, 0, "edx", 26), "arch-capabilities": (7, 0, "edx", 29),
    "lahf-lm": (0x80000001, 0, "ecx", 0), "svm": (0x80000001, 0, "ecx", 2),
    "abm": (0x80000001, 0, "ecx", 5), "syscall": (0x80000001, 0, "edx", 11),
    "nx": (0x80000001, 0, "edx", 20), "pdpe1gb": (0x80000001, 0, "edx", 26),
    "rdtscp": (0x80000001, 0, "edx", 27), "lm": (0x80000001, 0, "edx", 29),
    "invtsc": (0x80000007, 0, "edx", 8),
    # KVM's paravirtual features (KVM_CPUID_FEATURES, Documentation/virt/kvm/x86/cpuid.rst)
    "kvmclock": (0x40000001, 0, "eax", 0), "kvm-nopiodelay": (0x40000001, 0, "eax", 1),
    "kvm-mmu": (0x40000001, 0, "eax", 2), "kvm-asyncpf": (0x40000001, 0, "eax", 4),
    "kvm-steal-time": (0x40000001, 0, "eax", 5), "kvm-pv-eoi": (0x40000001, 0, "eax", 6),
    "kvm-pv-unhalt": (0x40000001, 0, "eax", 7), "kvm-pv-tlb-flush": (0x40000001, 0, "eax", 9),
    "kvm-asyncpf-vmexit": (0x40000001, 0, "eax", 10), "kvm-pv-ipi": (0x40000001, 0, "eax", 11),
    "kvm-poll-control": (0x40000001, 0, "eax", 12),
    "kvm-pv-sched-yield": (0x40000001, 0, "eax", 13), "kvm-asyncpf-int": (0x40000001, 0, "eax", 14),
    "kvm-msi-ext-dest-id": (0x40000001, 0, "eax", 15),
}


def parse_cpu_features(spec: str, supported: Iterable[Mapping[str, int]] = ()) -> dict[str, bool]:
    """``"+x2apic,-pcid,avx=off"`` -> ``{"x2apic": True, "pcid": False, "avx": False}``.
    ConfigError for a name pyvmm does not know, or a feature added that KVM cannot give."""
    out: dict[str, bool] = {}
    for word in filter(None, (w.strip() for w in spec.split(","))):
        if word[0] in "+-":
            name, on = word[1:], word[0] == "+"
        elif "=" in word:
            name, value = word.split("=", 1)
            on = value.lower() in ("on", "true", "yes", "1")
        else:
            name, on = word, True
        name = name.replace("_", "-")
        if name not in FEATURES:
            raise ConfigError(f"unknown CPU feature {name!r} (pyvmm knows: "
                              f"{', '.join(sorted(FEATURES))})")
        out[name] = on
    table = list(supported)
    if table:
        for name, on in out.items():
            if on and not supported_bit(table, name):
                raise ConfigError(f"cannot add +{name}: KVM does not support it on this host "
                                  "(KVM_GET_SUPPORTED_CPUID)")
    return out


def supported_bit(table: Iterable[Mapping[str, int]], name: str) -> bool:
    leaf, sub, reg, bit = FEATURES[name]
    return any(e["function"] == leaf and e["index"] == sub and e[reg] >> bit & 1 for e in table)


@functools.cache
def host_brand() -> list[tuple[int, int, int, int]]:
    """The host CPU's brand-string leaves (KVM leaves them empty; QEMU's -cpu host copies
    them from the host)."""
    from pyvmm.kvm.system import host_cpuid

    return [host_cpuid(leaf) for leaf in BRAND_LEAVES]


def host_vendor() -> str:
    """The host CPU's vendor string (CPUID leaf 0: EBX, EDX, ECX), e.g. ``GenuineIntel``."""
    from pyvmm.kvm.system import host_cpuid

    _, ebx, ecx, edx = host_cpuid(0)
    return struct.pack("<3I", ebx, edx, ecx).decode("ascii", "replace")


def brand_string(leaves: Iterable[tuple[int, int, int, int]]) -> str:
    return b"".join(struct.pack("<4I", *v) for v in leaves).split(b"\0", 1)[0].decode("ascii", "replace")


def vcpu_cpuid(supported: Iterable[dict[str, int]], apic_id: int, ncpus: int,
               features: Mapping[str, bool] | None = None,
               brand: list[tuple[int, int, int, int]] | None = None) -> list[dict[str, int]]:
    """A copy of ``supported`` for vCPU ``apic_id`` of ``ncpus``, ``features`` set or
    cleared, the brand string leaves filled (``brand``, default: the host's)."""
    brand = host_brand() if brand is None else brand
    by_leaf = dict(zip(BRAND_LEAVES, brand, strict=True))
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
        elif fn in by_leaf:
            e["eax"], e["ebx"], e["ecx"], e["edx"] = by_leaf[fn]
        for name, on in (features or {}).items():
            leaf_no, sub, reg, bit = FEATURES[name]
            if fn == leaf_no and e["index"] == sub:
                e[reg] = (e[reg] | (1 << bit)) if on else (e[reg] & ~(1 << bit))
        out.append(e)
    return out
