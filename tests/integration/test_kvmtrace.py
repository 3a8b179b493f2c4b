"""KVM's own side of each seed path, asserted on KVM's tracepoints (pyvmm.kvmtrace): what
the assertions expect depends on the MMU kind ``pyvmm info`` reports (shadow/PVM here,
EPT/NPT on VMX/SVM hosts), never on a CPU's name.  Every test needs root and tracefs
(``requires("kvm-trace")`` through the ``kvm_trace`` fixture)."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time

import pytest

from pyvmm import Space
from pyvmm.errors import MachineStateError
from pyvmm.hostinfo import detect
from pyvmm.kvmtrace import KvmTrace, KvmTraceError
from pyvmm.kvmtrace.tracefs import find_tracefs
from pyvmm.machine import Machine
from pyvmm.pytest_plugin import require
from tests.cli import pyvmm

HOST = detect()
COM1 = 0x3F8


def instances() -> set[str]:
    return {p.name for p in (find_tracefs(mount=False) / "instances").iterdir()}


def left_behind(before: set[str]) -> set[str]:
    """Instances made since ``before`` that are still there.  Not ``instances() == before``:
    a pyvmm run removes the stale instances of dead processes, so one another process left
    (a concurrent test run's, seen on a clean-clone CI run) may go in the meantime."""
    return instances() - before


def test_hello_com1_bytes_are_kvm_pio_with_stacks(pyvmm_machine, kvm_trace, guests):
    m = pyvmm_machine(guests / "hello.elf")
    m.enable_trace()
    before = instances()
    with kvm_trace(m, ["kvm:kvm_pio", "kvm:kvm_userspace_exit"], stacks="kvm_pio") as kt:
        assert len(instances() - before) == 1  # a private instance while it runs
        r = m.run(timeout=10)
        with pytest.raises(MachineStateError, match="still recording"):
            kt.count("kvm_pio")
    assert left_behind(before) == set()  # and gone afterwards
    assert r.ok and r.kvm_trace is kt and kt.lost == 0
    written = kt.events("kvm:kvm_pio", port=COM1, rw=1)
    # every byte the guest printed is one OUT to COM1's THR that KVM handed to pyvmm
    data = bytes(ev["val"] & 0xFF for ev in written)
    assert r.serial in data and len(written) >= len(r.serial), (len(written), r.serial)
    assert all(ev.vcpu == 0 and ev["size"] == 1 and ev["count"] == 1 for ev in written)
    assert kt.count("kvm_userspace_exit") >= len(r.serial)
    # the kernel stack of a port write ends in the vCPU's KVM_RUN ioctl
    stack, _ = kt.stacks("kvm:kvm_pio").most_common(1)[0]
    funcs = [f.split("+")[0] for f in stack]
    assert "kvm_arch_vcpu_ioctl_run" in funcs and "kvm_vcpu_ioctl" in funcs, funcs
    # one clock: every kvm_pio lies inside the KVM_RUN whose exit it caused
    runs = r.trace.by_vcpu(0)
    for ev in kt.events("kvm_pio"):
        assert any(x.t_enter <= ev.ts <= x.t_exit for x in runs), ev


def test_cr3_switch_loads_new_roots(pyvmm_machine, kvm_trace, guests):
    m = pyvmm_machine(guests / "cr3.elf")
    with kvm_trace(m, ["kvmmmu:kvm_mmu_get_page", "kvm:kvm_cr", "kvm:kvm_pio"]) as kt:
        r = m.run(timeout=10)
    assert r.ok
    syncs = kt.stage_times(1)
    assert len(syncs) == 3
    # the stretches in which the guest loaded space 1 and space 2 (each ends at its sync)
    roots = [len([e for e in kt.events("kvm_mmu_get_page") if a < e.ts < b])
             for a, b in itertools.pairwise(syncs)]
    if HOST.tdp:
        # EPT/NPT: a guest CR3 load is the guest's business; no shadow root is built
        assert roots == [0, 0], roots
    else:
        # shadow MMU (kvm_pvm too): each new address space needs a new shadow root
        assert all(n >= 1 for n in roots), roots
        new = [e for e in kt.between(None, 2).events("kvm_mmu_get_page") if e["created"]]
        assert len(new) >= 3, new


def test_guest_page_faults(pyvmm_machine, kvm_trace, guests):
    m = pyvmm_machine(guests / "paging.elf", cmdline="64")
    m.add_ram(0x20000000, 8 * 4096, log_dirty=True, name="logged")

    def demand(addr: int, size: int) -> int:
        if not m.memory.is_ram(0x30000000):
            m.add_ram(0x30000000, 0x200000, name="demand")
        return m.memory.read_int(addr, size)

    m.add_handler(Space.MMIO, 0x30000000, 0x200000, read=demand, name="demand-map")
    events = ["kvm:kvm_page_fault", "kvm:kvm_inj_exception", "kvm:kvm_mmio",
              "kvmmmu:kvm_mmu_pagetable_walk", "kvmmmu:kvm_mmu_set_spte",
              "kvmmmu:kvm_tdp_mmu_spte_changed", "kvmmmu:kvm_mmu_walker_error"]
    with kvm_trace(m, events) as kt:
        r = m.run(timeout=20)
    assert r.ok, r.message
    # stage 1 -> 2: a not-present page, handled by the guest's own #PF handler
    pf = kt.between(1, 2)
    first_touch = kt.between(None, 1)
    if HOST.tdp:
        # EPT/NPT: first touches of fresh guest memory are KVM's own faults
        assert first_touch.count("kvm_page_fault") > 0
        assert first_touch.count("kvm_tdp_mmu_spte_changed") + first_touch.count("kvm_mmu_set_spte") > 0
    else:
        # shadow paging walks the guest's tables; the guest's #PF is injected by KVM
        assert pf.count("kvm_inj_exception", exception=14) >= 1
        assert first_touch.count("kvm_mmu_pagetable_walk") >= 64
        if HOST.mmu == "pvm-shadow":
            assert pf.count("kvm_mmu_walker_error") >= 1  # the emulator's walk failed
    # stage 4 -> 5: the demand region read from pyvmm is KVM's MMIO exit
    assert kt.between(4, 5).count("kvm_mmio") >= 1


def test_lapic_timer_interrupts(pyvmm_machine, kvm_trace, guests):
    require(("xapic-timer",))
    m = pyvmm_machine(guests / "timer.elf", cmdline="oneshot 5")
    m.memory.write_int(m.image.symbols.address_of("tsc_per_us"), 8, m.vcpus[0].get_tsc_khz() // 1000)
    with kvm_trace(m, ["kvm:kvm_apic", "kvm:kvm_apic_accept_irq", "kvm:kvm_eoi",
                       "kvm:kvm_inj_virq", "kvm:kvm_vcpu_wakeup"]) as kt:
        r = m.run(timeout=20)
    assert r.ok, r.message
    n = r.syncs(1)[0].args[2]
    timer = kt.between(None, 1)
    # the guest armed the one-shot timer (a write to TMICT, APIC offset 0x380) each tick
    assert timer.count("kvm_apic", rw=1, reg=0x380) >= n
    # and KVM delivered its vector to the LAPIC and saw it acknowledged
    vectors = {e["vec"] for e in timer.events("kvm_apic_accept_irq")}
    assert len(vectors) >= 1 and timer.count("kvm_apic_accept_irq") >= n
    assert timer.count("kvm_eoi") >= n
    assert timer.count("kvm_vcpu_wakeup") >= 1  # the vCPU waited in HLT inside KVM


def test_memslot_remove_and_vm_creation(kvm_trace, guests):
    kt = kvm_trace(None, ["kvm:kvm_write_tsc_offset", "kvm:kvm_unmap_hva_range",
                          "kvm:kvm_update_master_clock",
                          "kvmmmu:kvm_mmu_zap_all_fast", "kvmmmu:kvm_mmu_prepare_zap_page"],
                   stacks=True)
    with kt:
        m = Machine.from_file(guests / "hello.elf", cpus=2)  # VM and vCPU creation
        try:
            kt.attach(m)
            region = m.add_ram(0x20000000, 16 * 4096, name="extra")
            m.memory.write(0x20000000, b"x" * 4096)
            hva = region.mapping.address
            r = m.run(timeout=10)
            t_remove = time.monotonic_ns()
            m.memory.remove(region)  # the memslot goes, its pages are given back
        finally:
            m.close()
    assert r.ok
    # VM creation: kvm_arch_init_vm sets up the VM's pvclock master clock
    assert any("kvm_arch_init_vm" in " ".join(e.stack) for e in kt.events("kvm_update_master_clock"))
    # vCPU creation: KVM synchronizes each new vCPU's TSC (kvm_arch_vcpu_postcreate)
    created = kt.events("kvm_write_tsc_offset")
    assert sorted({e["vcpu_id"] for e in created}) == [0, 1], created
    assert any("kvm_arch_vcpu_postcreate" in " ".join(e.stack) for e in created)
    # the slot's host pages given back: KVM's MMU notifier unmaps exactly that range
    unmaps = [e for e in kt.events("kvm_unmap_hva_range")
              if e["start"] <= hva and e["end"] >= hva + 16 * 4096]
    assert unmaps, [(hex(e["start"]), hex(e["end"])) for e in kt.events("kvm_unmap_hva_range")][:20]
    # deleting the memslot zaps the MMU's pages (KVM_SET_USER_MEMORY_REGION -> kvm_set_memslot)
    zaps = kt.events("kvm_mmu_prepare_zap_page") + kt.events("kvm_mmu_zap_all_fast")
    assert any("kvm_set_memslot" in " ".join(e.stack) and e.ts > t_remove for e in zaps), zaps
    # and the VM's destruction frees its roots
    assert any("kvm_destroy_vm" in " ".join(e.stack) for e in zaps)


def test_unknown_event_and_bad_filter_are_one_line_status_2(kvm_trace, guests):
    kvm_trace()  # skips where the host cannot trace
    before = instances()
    for spec, words in (("kvm:kvm_nosuch", "no event 'kvm:kvm_nosuch'"),
                        ("sched:sched_switch", "not a KVM event"),
                        ("kvm_pio if nosuchfield == 1", "filter")):
        p = pyvmm("run", "--kvm-trace", spec, str(guests / "hello.elf"))
        assert p.returncode == 2, (spec, p.stderr)
        assert words in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
        assert "Hello" not in p.stdout  # never a half-run
    assert left_behind(before) == set()
    with pytest.raises(KvmTraceError, match="no event"):
        KvmTrace(["kvm_nosuch_event"]).start()


def test_missing_and_readonly_tracefs(kvm_trace, guests, tmp_path):
    kvm_trace()
    with pytest.raises(KvmTraceError, match="not a tracefs"):
        KvmTrace(tracefs=tmp_path).start()
    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tracefs", "-o", "ro", "nodev", str(ro)]).returncode:
        pytest.skip("cannot mount a read-only tracefs here")
    try:
        with pytest.raises(KvmTraceError, match="read-only"):
            KvmTrace(tracefs=ro).start()
    finally:
        subprocess.run(["umount", str(ro)], check=True)


def test_full_buffer_says_how_many_were_lost(pyvmm_machine, kvm_trace, guests, monkeypatch):
    import pyvmm.kvmtrace.reader as reader

    monkeypatch.setattr(reader, "POLL_INTERVAL", 5.0)  # a reader that cannot keep up
    m = pyvmm_machine(guests / "cr3.elf")
    with kvm_trace(m, ["kvmmmu:kvm_mmu_paging_element", "kvmmmu:kvm_mmu_pagetable_walk"],
                   buffer_kb=8) as kt:
        r = m.run(timeout=20)
    assert r.ok
    assert kt.lost > 0 and len(kt.records) > 0


def test_two_runs_at_once_see_only_their_own(kvm_trace, guests, tmp_path):
    kvm_trace()
    out: dict[str, subprocess.CompletedProcess[str]] = {}

    def go(name: str) -> None:
        out[name] = pyvmm("run", "--kvm-trace=kvm:kvm_pio", "--trace", str(tmp_path / f"{name}.json"),
                          str(guests / f"{name}.elf"))

    threads = [threading.Thread(target=go, args=(g,)) for g in ("hello", "cr3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    com1 = {}
    for name, p in out.items():
        assert p.returncode == 0, p.stderr
        data = json.loads((tmp_path / f"{name}.json").read_text())
        pio = [e for e in data["traceEvents"] if e["name"] == "kvm:kvm_pio"]
        assert pio and data["otherData"]["kvm_events_lost"] == 0
        com1[name] = sum(1 for e in pio if e["args"]["port"] == hex(COM1) and e["args"]["rw"] == 1)
    assert com1["hello"] >= len(out["hello"].stdout) > 0
    assert com1["cr3"] == 0  # cr3 prints nothing: hello's port writes are not in its capture


def test_cli_stat_and_trace_json(guests, tmp_path, kvm_trace):
    kvm_trace()
    t = tmp_path / "t.json"
    p = pyvmm("run", "--kvm-trace", "--kvm-stacks", "--kvm-stat", "--trace", str(t),
              str(guests / "cr3.elf"))
    assert p.returncode == 0, p.stderr
    assert "between stage 1" in p.stderr and "kvm_mmu_get_page" in p.stderr
    assert "most frequent kernel stacks" in p.stderr
    data = json.loads(t.read_text())
    kvm = [e for e in data["traceEvents"] if e.get("cat") == "kvm"]
    assert any(e["name"] == "kvm:kvm_pio" and e["tid"] == 1 and e["args"].get("stack") for e in kvm)
    assert data["otherData"]["kvm_events"] == len(kvm)


def test_not_root_is_one_line_status_2(guests, kvm_trace):
    kvm_trace()
    if os.geteuid() != 0:
        pytest.skip("runs the CLI as nobody from root")
    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                        *[*__import__("tests.cli", fromlist=["COMMAND"]).COMMAND],
                        "run", "--kvm-trace", str(guests / "hello.elf")],
                       capture_output=True, text=True, timeout=60)
    if "Permission denied" in p.stderr and "python" in p.stderr.lower():
        pytest.skip("nobody cannot run this pyvmm install")
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "root" in p.stderr, p.stderr


def test_nothing_when_off(guests):
    """Without --kvm-trace a run loads none of pyvmm.kvmtrace and touches no tracefs."""
    import sys

    code = ("import sys; from pyvmm import Machine\n"
            f"m = Machine.from_file({str(guests / 'hello.elf')!r}); r = m.run(timeout=10); m.close()\n"
            "assert r.ok and not [k for k in sys.modules if k.startswith('pyvmm.kvmtrace')]\n")
    # -P: the working directory (the checkout, with no _native) stays off sys.path
    p = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr


def test_readme_example(kvm_trace, capsys):
    import re
    from pathlib import Path

    kvm_trace()
    root = Path(__file__).resolve().parents[2]
    section = (root / "README.md").read_text().split("## What KVM did", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    block = block.replace('"guests/build/', f'"{root}/guests/build/')
    exec(compile("from pyvmm import Machine\n" + block, "README.md", "exec"), {})
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "2 5", lines  # the two CR3 loads after the first sync; 5 syncs/done
    assert "mmu_alloc_root" in lines[1]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "timeout", "SIGKILL"])
def test_instance_removed_after_signal_timeout_or_kill(guests, kvm_trace, sig):
    """The capture's instance goes when the run ends any way; one left by a SIGKILL-ed
    process (no clean-up can run) is removed by the next capture."""
    import select
    import signal

    from tests.cli import COMMAND

    kvm_trace()
    before = instances()
    limit = "1" if sig == "timeout" else "20"
    p = subprocess.Popen([*COMMAND, "run", "--kvm-trace", "--append", "partial", "--timeout", limit,
                          str(guests / "hostile.elf")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout is not None
        got, deadline = b"", time.monotonic() + 10
        while b"prompt> " not in got and time.monotonic() < deadline:
            if select.select([p.stdout], [], [], 0.05)[0]:
                got += os.read(p.stdout.fileno(), 4096)
        assert b"prompt> " in got
        assert len(instances() - before) == 1
        if sig != "timeout":
            p.send_signal(getattr(signal, sig))
        p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    expect = {"SIGINT": 130, "SIGTERM": 143, "timeout": 124, "SIGKILL": -9}[sig]
    assert p.returncode == expect
    if sig == "SIGKILL":
        assert f"pyvmm-{p.pid}-0" in instances()  # left behind: no clean-up can run
        with KvmTrace(["kvm:kvm_pio"]):
            pass
    assert left_behind(before) == set()


def test_two_vcpus_events_on_their_own_tracks(kvm_trace, guests):
    """The BSP starts the AP (INIT/SIPI IPIs) and both print: each KVM event is mapped to
    the vCPU whose thread it came from, and lies inside a KVM_RUN of that vCPU."""
    with Machine.from_elf(guests / "selftest.elf", cmdline="smp", cpus=2) as m:
        m.enable_trace()
        with kvm_trace(m, ["kvm:kvm_pio", "kvm:kvm_apic_ipi"]) as kt:
            r = m.run(timeout=10)
    assert r.ok, r.text
    assert kt.count("kvm_apic_ipi") >= 2 and {e.vcpu for e in kt.events("kvm_apic_ipi")} == {0}
    for v in (0, 1):
        pio = kt.on_vcpu(v).events("kvm_pio")
        assert len(pio) == r.vcpu_exit_counts[v].get("IO", 0), (v, len(pio), r.vcpu_exit_counts)
        runs = r.trace.by_vcpu(v)
        assert all(any(x.t_enter <= e.ts <= x.t_exit for x in runs) for e in pio)
