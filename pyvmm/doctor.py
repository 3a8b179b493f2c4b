"""``pyvmm doctor``: which features this KVM host really has, found by running tiny probes.

Each feature is decided by doing it (the probe guest ``pyvmm/probes/probe.c``, built with
the wheel, or a host-side ioctl), never by what CPUID or a capability claims: on kvm_pvm the
guest's CPUID advertises features its CPL0 emulator cannot execute.

A probe has three answers: the host has the feature, the host lacks it (the guest saw the
instruction fail, the ioctl refused, the vCPU hung), or the probe could not run (the probe
guest is missing, /dev/kvm cannot be opened, pyvmm itself failed).  Only the first two are
facts about the host; the third is an error, reported as one and never cached.  Answers
are cached per host and per probe set in ``$XDG_CACHE_HOME/pyvmm`` (the key covers the
kernel release, vendor module, CPU model, pyvmm's version and the probe guest's bytes), so
test runs consult them for free; ``pyvmm doctor --refresh`` probes again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import struct
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyvmm.debug.debugger import HostDebug
from pyvmm.errors import PyvmmError
from pyvmm.hostinfo import detect
from pyvmm.kvm import Kvm, KvmError
from pyvmm.kvm.vcpu import GUESTDBG_ENABLE, GUESTDBG_SINGLESTEP, GUESTDBG_USE_HW_BP, GUESTDBG_USE_SW_BP
from pyvmm.machine import Machine, RunResult
from pyvmm.x86.modes import set_protected_mode

PROBE_TIMEOUT = 3.0
#: bump when a probe's meaning changes: old cached answers are then probed again
PROBE_SET_VERSION = 4
#: run statuses that are the host's answer (the guest saw the feature fail); any other
#: status means the probe itself did not run properly
HOST_ANSWERS = ("done", "exit", "crash", "assert", "timeout", "debug")


class ProbeError(PyvmmError):
    """A probe could not run (pyvmm's fault or the set-up's, not the host's answer)."""


@dataclass
class Feature:
    """One feature: ``works`` is True/False when probed, None when the probe errored."""

    name: str
    works: bool | None
    detail: str
    group: str = ""
    #: what a probe found beyond yes/no, for tools (set-cpuid: honoured and ignored flags)
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def error(self) -> bool:
        return self.works is None


@dataclass
class HostFeatures:
    key: str
    host: str
    created: float
    features: dict[str, Feature] = field(default_factory=dict)
    #: why this answer could not be cached (not part of the answer: never serialized)
    cache_error: str | None = field(default=None, compare=False)

    @property
    def errors(self) -> list[Feature]:
        return [f for f in self.features.values() if f.error]

    def to_json(self) -> str:
        return json.dumps({"key": self.key, "host": self.host, "created": self.created,
                           "features": [asdict(f) for f in self.features.values()]}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> HostFeatures:
        d = json.loads(text)
        feats = {f["name"]: Feature(**f) for f in d["features"]}
        return cls(d["key"], d["host"], d["created"], feats)


def probe_guest() -> Path:
    """The probe guest shipped with this install; ProbeError when it is missing."""
    path = Path(__file__).resolve().parent / "probes" / "probe.elf"
    if not path.is_file():
        raise ProbeError(f"the probe guest {path} is missing from this pyvmm install; "
                         "reinstall pyvmm (the wheel builds it)")
    return path


def host_key() -> tuple[str, str]:
    """``(key, description)``: the cache key covers the host and this exact probe set."""
    from pyvmm import __version__

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f
                    if line.startswith("model name")), "")
    host = detect()
    text = f"{platform.release()} {host.module} {host.mmu} {cpu} {__version__}"
    h = hashlib.sha256(f"{text} probes-v{PROBE_SET_VERSION} {[p[0] for p in PROBES]}".encode())
    with contextlib.suppress(ProbeError, OSError):
        h.update(probe_guest().read_bytes())
    return h.hexdigest()[:16], text


def _probe(mode: str, timeout: float = PROBE_TIMEOUT, **kw: Any) -> RunResult:
    with Machine.from_elf(probe_guest(), cmdline=mode, **kw) as m:
        return m.run(timeout=timeout)


def _answer(r: RunResult, what: str) -> tuple[bool, str]:
    """A run that ended another way than GUEST_DONE: the host's "no", or a probe error."""
    if r.status not in HOST_ANSWERS:
        raise ProbeError(f"{what}: the probe run ended with {r.status}: {r.message}")
    if r.status == "timeout":
        return False, f"{what}: the vCPU never got past it ({r.message})"
    return False, f"{what}: {r.message}"


def _guest(mode: str, what: str, timeout: float = PROBE_TIMEOUT, **kw: Any) -> tuple[bool, str]:
    r = _probe(mode, timeout, **kw)
    sync = r.syncs(1)
    if r.status == "done" and sync:
        ok = sync[0].args[1] == 1
        vec = sync[0].args[2] if len(sync[0].args) > 2 else 0
        return ok, f"{what} works" if ok else f"{what} raised vector {vec} in the guest"
    return _answer(r, what)


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
    tables = 0x3000000
    what = "PAE paging outside long mode" if pae else "32-bit paging (PSE 4 MiB pages)"
    with Machine.from_elf(probe_guest(), cmdline="nop") as m:
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
        assert m.plan is not None
        set_protected_mode(s, gdt_base=m.plan.entry.gdt_base)  # the loader's flat GDT
        s.cr3, s.cr4 = tables, 0x20 if pae else 0x10  # PAE, or PSE for 4 MiB pages
        bsp.set_sregs(s)
        assert m.image is not None
        rip = m.image.symbols.address_of("pg32_probe")
        if rip is None:
            raise ProbeError("the probe guest has no pg32_probe symbol")
        bsp.set_regs(rip=rip)
        r = m.run(timeout=PROBE_TIMEOUT)
    if r.status == "exit" and r.exit_code == 1:
        return True, f"{what}: works"
    return _answer(r, what)


def _smp() -> tuple[bool, str]:
    return _guest("smp", "2 vCPUs, the AP started by INIT/SIPI,", cpus=2)


def _dirty_log() -> tuple[bool, str]:
    with Machine.from_elf(probe_guest(), cmdline="touch 0x20001000 2") as m:
        region = m.add_ram(0x20000000, 4 * 4096, log_dirty=True)
        r = m.run(timeout=PROBE_TIMEOUT)
        pages = m.memory.dirty_pages(region)
    if not r.ok:
        return _answer(r, "writing 2 pages")
    ok = pages == [0x20001000, 0x20002000]
    return ok, f"KVM_GET_DIRTY_LOG reported {[hex(p) for p in pages]} for 2 written pages"


def _debug(control: int, hw_breakpoint: bool = False) -> tuple[bool, str]:
    with Machine.from_elf(probe_guest(), cmdline="nop") as m:
        debugreg: tuple[int, ...] = ()
        if hw_breakpoint:
            debugreg = (_symbol(m, "main"), 0, 0, 0, 0, 0, 0, 0x1)
        m.vcpus[0].set_guest_debug(GUESTDBG_ENABLE | control, debugreg)
        r = m.run(timeout=PROBE_TIMEOUT)
    if r.status == "debug":
        return True, r.message
    return _answer(r, "KVM_SET_GUEST_DEBUG")


def _sw_breakpoint() -> tuple[bool, str]:
    """int3 patched over main's first byte, KVM_GUESTDBG_USE_SW_BP: a debug exit with
    exception 3 at main means software breakpoints work."""
    with Machine.from_elf(probe_guest(), cmdline="nop") as m:
        main = _symbol(m, "main")
        m.memory.write(main, b"\xcc")
        m.vcpus[0].set_guest_debug(GUESTDBG_ENABLE | GUESTDBG_USE_SW_BP)
        r = m.run(timeout=PROBE_TIMEOUT)
    if r.status == "debug" and r.outcomes[0].details.get("exception") == 3:
        return True, r.message
    return _answer(r, "int3 with KVM_GUESTDBG_USE_SW_BP")


def _watchpoint() -> tuple[bool, str]:
    """DR0 watching an 8-byte store (DR7: L0, R/W0 = write, LEN0 = 8 bytes)."""
    with Machine.from_elf(probe_guest(), cmdline="store") as m:
        watched = _symbol(m, "probe_watched")
        dr7 = 0x1 | (0b01 << 16) | (0b10 << 18)
        m.vcpus[0].set_guest_debug(GUESTDBG_ENABLE | GUESTDBG_USE_HW_BP,
                                   (watched, 0, 0, 0, 0, 0, 0, dr7))
        r = m.run(timeout=PROBE_TIMEOUT)
    if r.status == "debug":
        return True, r.message
    if r.status == "done":
        return False, "a data watchpoint (DR0, write) never fired"
    return _answer(r, "data watchpoint")


def _symbol(m: Machine, name: str) -> int:
    assert m.image is not None
    address = m.image.symbols.address_of(name)
    if address is None:
        raise ProbeError(f"the probe guest has no {name} symbol")
    return address


def host_debug(warn: Callable[[str], None]) -> HostDebug:
    """What this host's debug support offers, as the probes answered (the one owner of
    that policy: the CLI hands it to ``Machine.host_debug``); a probe that could not run
    is said with ``warn`` and counts as unsupported (the safe choice for gdb)."""
    found = host_features()
    answers = []
    for name in ("sw-breakpoint", "hw-watchpoint"):
        f = found.features.get(name)
        if f is None or f.works is None:
            warn(f"could not probe {name} ({f.detail if f else 'no probe'}); not offered to gdb")
        answers.append(bool(f and f.works))
    return HostDebug(software_breakpoints=answers[0], data_watchpoints=answers[1])


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


#: flags the set-cpuid probe hides one at a time (those kvm-unit-tests' configs toggle most)
CPUID_PROBE_FLAGS = ("x2apic", "tsc-deadline", "pcid", "xsave", "avx", "popcnt", "rdtscp",
                     "pdpe1gb", "smep", "la57", "hypervisor")


def _set_cpuid() -> tuple[bool, str, dict[str, Any]]:
    """Hide each flag with KVM_SET_CPUID2 and look from inside the guest whether it is gone:
    on VMX/SVM KVM every one is; kvm_pvm shows some host bits whatever it is told (even
    bits KVM_GET_SUPPORTED_CPUID does not offer)."""
    from pyvmm.x86.cpuid import FEATURES

    honoured: list[str] = []
    ignored: list[str] = []
    for flag in CPUID_PROBE_FLAGS:
        leaf, _sub, reg, bit = FEATURES[flag]
        r = _probe(f"cpuid {leaf}", cpu_features=f"-{flag}")
        sync = r.syncs(2)
        if r.status != "done" or not sync:
            raise ProbeError(f"the cpuid probe ended with {r.status}: {r.message}")
        value = sync[0].args[1 + ("eax", "ebx", "ecx", "edx").index(reg)]
        (ignored if value >> bit & 1 else honoured).append(flag)
    detail = f"hidden as asked: {', '.join(honoured) or 'none'}"
    if ignored:
        detail += f"; the guest still sees: {', '.join(ignored)}"
    return bool(honoured), detail, {"honoured": honoured, "ignored": ignored}


def cpuid_ignored(spec: str) -> list[str]:
    """The flags of ``spec`` (``"+x2apic,-pcid"``) the set-cpuid probe found this host to
    ignore; [] when the probe could not tell."""
    from pyvmm.x86.cpuid import parse_cpu_features

    try:
        feature = host_features().features.get("set-cpuid")
    except KvmError:
        return []
    ignored = set(feature.data.get("ignored", ())) if feature else set()
    return [name for name in parse_cpu_features(spec) if name in ignored]


def _tdp() -> tuple[bool, str]:
    h = detect()
    return h.tdp, h.describe()


def _kvm_trace(which: str) -> Callable[[], tuple[bool, str]]:
    """The kvm-trace group (pyvmm.kvmtrace.probe), around the probe guest's ``nop``."""
    def check() -> tuple[bool, str]:
        from pyvmm.kvmtrace import probe

        def run() -> object:
            return _probe("nop")
        if which == "mmu":
            return probe.group_present("kvmmmu")
        return {"trace": probe.tracefs_usable, "stacks": probe.stacks_work,
                "exits": probe.exit_events}[which](run)
    return check


Probe = Callable[[], tuple[bool, str] | tuple[bool, str, dict[str, Any]]]
PROBES: list[tuple[str, str, Probe]] = [
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
    ("singlestep", "debug", lambda: _debug(GUESTDBG_SINGLESTEP)),
    ("hw-breakpoint", "debug", lambda: _debug(GUESTDBG_USE_HW_BP, hw_breakpoint=True)),
    ("sw-breakpoint", "debug", _sw_breakpoint),
    ("hw-watchpoint", "debug", _watchpoint),
    ("split-irqchip", "irq", _cap("SPLIT_IRQCHIP")),
    ("msr-filter", "msr", _cap("X86_MSR_FILTER")),
    ("set-cpuid", "cpuid", _set_cpuid),
    ("kvm-trace", "kvm-trace", _kvm_trace("trace")),
    ("kvm-trace-mmu", "kvm-trace", _kvm_trace("mmu")),
    ("kvm-stacks", "kvm-trace", _kvm_trace("stacks")),
    ("kvm-exit-events", "kvm-trace", _kvm_trace("exits")),
]


def probe_all(progress: Callable[[str], None] | None = None) -> HostFeatures:
    """Run every probe.  Raises KvmError when /dev/kvm itself is unusable (then nothing
    can be probed); a probe that fails for any other reason of pyvmm's becomes an error
    feature (``works`` None) with the reason."""
    Kvm().close()  # no access to /dev/kvm: say so once, probe nothing
    key, host = host_key()
    out = HostFeatures(key, host, time.time())
    for name, group, fn in PROBES:
        if progress:
            progress(name)
        works: bool | None
        data: dict[str, Any] = {}
        try:
            answer = fn()
            works, detail = answer[0], answer[1]
            if len(answer) == 3:
                data = answer[2]
        except Exception as e:  # a probe that could not run is never "the host lacks it"
            works, detail = None, f"probe could not run: {type(e).__name__}: {e}"
        out.features[name] = Feature(name, works, detail, group, data)
    return out


def cache_path(key: str) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pyvmm" / f"doctor-{key}.json"


_MEMO: HostFeatures | None = None


def host_features(refresh: bool = False) -> HostFeatures:
    """The cached answer for this host, probing (and caching) when there is none.  An
    answer with probe errors is returned but never cached, so the next call probes again."""
    global _MEMO
    key, _ = host_key()
    if _MEMO is not None and _MEMO.key == key and not refresh:
        return _MEMO
    path = cache_path(key)
    if not refresh and path.exists():
        try:
            cached = HostFeatures.from_json(path.read_text())
            if cached.key == key and not cached.errors:
                _MEMO = cached
                return cached
        except (ValueError, KeyError, TypeError):
            pass  # a corrupt cache is probed again
    found = probe_all()
    if found.errors:
        return found
    _MEMO = found
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(found.to_json())
        tmp.replace(path)
    except OSError as e:  # a read-only home still gets the answer, just not cached
        found.cache_error = f"{e.strerror or e} ({e.filename or path})"
    return found
