"""``pyvmm doctor``: which features this KVM host really has, found by running tiny probes.

Each feature is decided by doing it (a probe guest from ``guests/probe.c``, or a host-side
ioctl), never by what CPUID or a capability claims: on kvm_pvm the guest's CPUID advertises
features its CPL0 emulator cannot execute.  The answers are cached per host (kernel
release, vendor module, CPU model, pyvmm version) in ``$XDG_CACHE_HOME/pyvmm`` so that
test runs consult them for free; ``pyvmm doctor --refresh`` probes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pyvmm._native import lib
from pyvmm.hostinfo import detect
from pyvmm.kvm import Kvm, KvmError
from pyvmm.machine import Machine, RunResult

PROBE_TIMEOUT = 3.0


@dataclass
class Feature:
    name: str
    works: bool
    detail: str
    group: str = ""


@dataclass
class HostFeatures:
    key: str
    host: str
    created: float
    features: dict[str, Feature] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "host": self.host, "created": self.created,
                           "features": [asdict(f) for f in self.features.values()]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HostFeatures:
        d = json.loads(text)
        feats = {f["name"]: Feature(**f) for f in d["features"]}
        return cls(d["key"], d["host"], d["created"], feats)


def guest_dir() -> Path:
    """Where the built guests are: $PYVMM_GUESTS, else the source tree's guests/build."""
    env = os.environ.get("PYVMM_GUESTS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "guests" / "build"


def host_key() -> tuple[str, str]:
    from pyvmm import __version__

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
    host = detect()
    text = f"{platform.release()} {host.module} {host.mmu} {cpu} {__version__}"
    return hashlib.sha256(text.encode()).hexdigest()[:16], text


def _probe(mode: str, timeout: float = PROBE_TIMEOUT, **kw: object) -> RunResult:
    with Machine.from_elf(guest_dir() / "probe.elf", cmdline=mode, **kw) as m:
        return m.run(timeout=timeout)


def _guest(mode: str, what: str, timeout: float = PROBE_TIMEOUT) -> tuple[bool, str]:
    r = _probe(mode, timeout)
    sync = r.syncs(1)
    if r.status == "done" and sync:
        ok = sync[0].args[1] == 1
        vec = sync[0].args[2] if len(sync[0].args) > 2 else 0
        return ok, f"{what} works" if ok else f"{what} raised vector {vec} in the guest"
    if r.status == "timeout":
        return False, f"{what}: the vCPU never got past it ({r.message})"
    return False, f"{what}: {r.message}"


def _insn(name: str, timeout: float = PROBE_TIMEOUT) -> Callable[[], tuple[bool, str]]:
    return lambda: _guest(f"insn {name}", f"{name} at CPL0", timeout)


def _la57() -> tuple[bool, str]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        v = vm.create_vcpu(0)
        s = v.get_sregs()
        s.cr0, s.cr4, s.efer = 0x80050033, 0x20 | (1 << 12), 0x500
        try:
            v.set_sregs(s)
        except KvmError as e:
            return False, f"KVM_SET_SREGS with CR4.LA57: {e.strerror}"
    return True, "KVM_SET_SREGS accepts CR4.LA57"


def _paging32(pae: bool) -> tuple[bool, str]:
    """Start in 32-bit protected mode (paging off) and let the guest set CR0.PG with
    32-bit PSE paging or PAE paging, tables prepared here: HOST-KVM.md found both refused
    on kvm_pvm, where only long-mode paging works."""
    import struct

    from pyvmm._native import ffi
    from pyvmm.x86.modes import set_protected_mode

    tables = 0x3000000
    with Machine.from_elf(guest_dir() / "probe.elf", cmdline="nop") as m:
        if pae:  # PDPT (4 entries) + 4 PDs of 2 MiB pages: identity 4 GiB
            m.memory.write(tables, struct.pack("<4Q", *[(tables + 0x1000 * (i + 1)) | 1
                                                       for i in range(4)]))
            for i in range(4):
                pd = struct.pack("<512Q", *[((i * 512 + j) << 21) | 0x83 for j in range(512)])
                m.memory.write(tables + 0x1000 * (i + 1), pd)
        else:  # one page directory of 4 MiB PSE pages: identity 4 GiB
            m.memory.write(tables, struct.pack("<1024I", *[(i << 22) | 0x83 for i in range(1024)]))
        bsp = m.vcpus[0]
        s = bsp.get_sregs()
        set_protected_mode(s, gdt_base=m.boot_plan.gdt_addr)
        s.cr3, s.cr4 = tables, 0x20 if pae else 0x10  # PAE, or PSE for 4 MiB pages
        bsp.set_sregs(s)
        rip = m.image.symbols.address_of("pg32_probe")
        bsp.set_regs(ffi.new("struct kvm_regs *", {"rip": rip, "rflags": 2}))
        r = m.run(timeout=PROBE_TIMEOUT)
    what = "PAE paging outside long mode" if pae else "32-bit paging (PSE 4 MiB pages)"
    ok = r.status == "exit" and r.exit_code == 1
    return ok, f"{what}: {'works' if ok else r.message}"


def _smp() -> tuple[bool, str]:
    with Machine.from_elf(guest_dir() / "protocol.elf", cmdline="smp", cpus=2) as m:
        r = m.run(timeout=PROBE_TIMEOUT)
    return r.status == "done", "2 vCPUs: AP started by INIT/SIPI" if r.status == "done" \
        else f"2 vCPUs: {r.message}"


def _dirty_log() -> tuple[bool, str]:
    with Machine.from_elf(guest_dir() / "selftest.elf", cmdline="touch 0x20001000 2") as m:
        region = m.add_ram(0x20000000, 4 * 4096, log_dirty=True)
        r = m.run(timeout=PROBE_TIMEOUT)
        pages = m.memory.dirty_pages(region)
    ok = r.ok and pages == [0x20001000, 0x20002000]
    return ok, f"KVM_GET_DIRTY_LOG reported {[hex(p) for p in pages]} for 2 written pages"


def _debug(control: int, debugreg: tuple[int, ...] = ()) -> tuple[bool, str]:
    with Machine.from_elf(guest_dir() / "probe.elf", cmdline="nop") as m:
        if debugreg:
            main = m.image.symbols.address_of("main")
            debugreg = (main, 0, 0, 0, 0, 0, 0, 0x1)
        m.vcpus[0].set_guest_debug(lib.KVM_GUESTDBG_ENABLE | control, debugreg)
        r = m.run(timeout=PROBE_TIMEOUT)
    ok = r.status == "debug"
    return ok, r.message


def _set_tsc() -> tuple[bool, str]:
    with Kvm() as kvm, kvm.create_vm() as vm:
        v = vm.create_vcpu(0)
        before = v.get_msrs([0x10])[0x10]
        v.set_msrs({0x10: 1 << 40})
        after = v.get_msrs([0x10])[0x10]
    ok = abs(after - (1 << 40)) < 1 << 32
    return ok, f"KVM_SET_MSRS(IA32_TSC=2^40): TSC reads {after:#x} (was {before:#x})"


def _cap(name: str) -> Callable[[], tuple[bool, str]]:
    def check() -> tuple[bool, str]:
        with Kvm() as kvm:
            v = kvm.capabilities.get(name, 0)
        return bool(v), f"KVM_CAP_{name} = {v}"
    return check


def _tdp() -> tuple[bool, str]:
    h = detect()
    return h.tdp, h.describe()


PROBES: list[tuple[str, str, Callable[[], tuple[bool, str]]]] = [
    ("tdp", "mmu", _tdp),
    ("cpl0-native", "cpu", lambda: _guest("insn popcnt", "popcnt at CPL0 (CPL0 code natively)")),
    ("insn-sse", "cpu", _insn("sse")),
    ("insn-xgetbv", "cpu", _insn("xgetbv")),
    ("insn-int3", "cpu", _insn("int3")),
    ("insn-int-n", "cpu", _insn("int-n")),
    ("insn-rdtscp", "cpu", _insn("rdtscp")),
    ("insn-vmcall", "cpu", _insn("vmcall", timeout=0.5)),  # on kvm_pvm it never completes
    ("paging32-pse", "paging", lambda: _paging32(False)),
    ("pae32", "paging", lambda: _paging32(True)),
    ("pcid", "paging", lambda: _guest("pcid", "CR4.PCIDE")),
    ("1g-pages", "paging", lambda: _guest("1g-pages", "a 1 GiB page")),
    ("la57", "paging", _la57),
    ("xapic-timer", "timers", lambda: _guest("xapic-timer", "xAPIC one-shot timer")),
    ("x2apic-timer", "timers", lambda: _guest("x2apic-timer", "x2APIC one-shot timer")),
    ("tsc-deadline", "timers", lambda: _guest("tsc-deadline", "TSC-deadline timer")),
    ("set-tsc", "timers", _set_tsc),
    ("smp", "smp", _smp),
    ("dirty-log", "memory", _dirty_log),
    ("readonly-mem", "memory", _cap("READONLY_MEM")),
    ("singlestep", "debug", lambda: _debug(lib.KVM_GUESTDBG_SINGLESTEP)),
    ("hw-breakpoint", "debug", lambda: _debug(lib.KVM_GUESTDBG_USE_HW_BP, (1,))),
    ("split-irqchip", "irq", _cap("SPLIT_IRQCHIP")),
    ("msr-filter", "msr", _cap("X86_MSR_FILTER")),
]


def probe_all(progress: Callable[[str], None] | None = None) -> HostFeatures:
    key, host = host_key()
    out = HostFeatures(key, host, time.time())
    for name, group, fn in PROBES:
        if progress:
            progress(name)
        try:
            works, detail = fn()
        except (KvmError, OSError, ValueError) as e:
            works, detail = False, f"probe failed: {e}"
        out.features[name] = Feature(name, works, detail, group)
    return out


def cache_path(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "pyvmm" / f"doctor-{key}.json"


_MEMO: HostFeatures | None = None


def host_features(refresh: bool = False) -> HostFeatures:
    """The cached answer for this host, probing (and caching) when there is none."""
    global _MEMO
    key, _ = host_key()
    if _MEMO is not None and _MEMO.key == key and not refresh:
        return _MEMO
    path = cache_path(key)
    if not refresh and path.exists():
        try:
            _MEMO = HostFeatures.from_json(path.read_text())
            return _MEMO
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt cache is probed again
    _MEMO = probe_all()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_MEMO.to_json())
    except OSError:
        pass  # a read-only home still gets the answer, just not cached
    return _MEMO
