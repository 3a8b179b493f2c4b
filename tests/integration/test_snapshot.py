"""Snapshots on the real /dev/kvm: the guest (guests/snapshot.c) cannot tell it was
restored or cloned; files are checked like any untrusted input."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pyvmm.machine import Machine
from pyvmm.snapshot import HEADER, MAGIC, SnapshotError, load
from pyvmm.snapshot_file import PAGE
from tests.cli import pyvmm


def syncs(r):  # type: ignore[no-untyped-def]
    return [(e.stage, e.args) for e in r.events if e.kind == "sync"]


def boot_to_sync(path: Path, stage: int = 1, **kw: object) -> Machine:
    m = Machine.from_file(path, **kw)  # type: ignore[arg-type]
    r = m.run_to_sync(stage, 30)
    assert r.status == "stopped" and r.syncs(stage), r.message
    return m


@pytest.mark.parametrize("guest, cpus", [("snapshot.elf", 2), ("snapshot.flat", 2),
                                         ("snapshot.elf", 1)])
def test_restored_guest_cannot_tell(guests: Path, guest: str, cpus: int) -> None:
    """After the snapshot the guest counts on from RAM, waits for a LAPIC timer it armed
    before it, reads back a UART register, and an AP finishes a loop whose state is in its
    registers: every restore replays that exactly, also after the guest ended."""
    with boot_to_sync(guests / guest, cpus=cpus) as m:
        snap = m.snapshot()
        first = m.run(timeout=30)
        assert first.ok and len(syncs(first)) == 2, first.message
        stage2 = syncs(first)[0][1]
        assert stage2[:4] == (2, 41 + 1000, 1, 0x5A)  # counter, one timer tick, UART scratch
        copied = []
        for _ in range(3):
            copied.append(m.restore(snap))
            again = m.run(timeout=30)
            assert again.ok and syncs(again) == syncs(first)
        assert copied[0] < 64 and copied[1] < 64  # only pages written since: dirty log


def test_restore_brings_back_a_page_the_host_wrote(guests: Path) -> None:
    with boot_to_sync(guests / "snapshot.elf") as m:
        assert m.symbols is not None
        page = m.symbols.address_of("host_page")
        snap = m.snapshot()
        m.memory.write_int(page, 8, 0xFEED)
        assert syncs(m.run(timeout=30))[0][1][5] == 0xFEED
        m.restore(snap)
        assert syncs(m.run(timeout=30))[0][1][5] == 0


def test_snapshot_of_another_shape_is_refused(guests: Path) -> None:
    with boot_to_sync(guests / "snapshot.elf") as m, Machine.from_file(
            guests / "snapshot.elf", mem="32M") as other, pytest.raises(SnapshotError, match="mem"):
        other.restore(m.snapshot())


def test_save_and_clone_in_another_process(guests: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    with boot_to_sync(guests / "snapshot.elf", cpus=2) as m:
        m.snapshot().save(path)
        want = syncs(m.run(timeout=30))
    assert os.stat(path).st_blocks * 512 < os.stat(path).st_size / 4  # zero pages are holes
    code = textwrap.dedent(f"""
        from pyvmm.machine import Machine
        with Machine.from_snapshot({str(path)!r}) as c:
            r = c.run(timeout=30)
            print(r.status, [(e.stage, list(e.args)) for e in r.events if e.kind == "sync"])
            with open({str(path)!r}, "rb") as f:
                assert f.read(8) == b"PYVMMSNP"  # the clone never wrote the file
    """)
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)  # never the source tree: the installed pyvmm
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"exit {[(s, list(a)) for s, a in want]}"
    snap = load(path)
    assert snap.config["cpus"] == 2 and len(snap.vcpus) == 2
    snap.close()



def test_clones_follow_what_the_file_and_a_loaded_snapshot_say(guests: Path, tmp_path: Path) -> None:
    """A process keeps what it built from a snapshot file (its checked metadata, its ioctl
    structs, the guest image parsed for symbols), but a clone still gets what the file and
    the snapshot say now: a loaded snapshot edited by its user is restored as edited (not
    as an earlier clone of the same file had it), a device state made hostile since is
    refused, and a guest image replaced since gives its own symbols, a removed one none."""
    image = tmp_path / "guest.elf"
    image.write_bytes((guests / "snapshot.elf").read_bytes())
    path = tmp_path / "s.snap"
    with boot_to_sync(image) as m:
        m.snapshot().save(path)
        want = syncs(m.run(timeout=30))
    for _ in range(2):
        with Machine.from_snapshot(path) as c:
            assert c.symbols is not None and c.symbols.address_of("host_page") is not None
            assert syncs(c.run(timeout=30)) == want
    snap = load(path)
    try:
        with Machine.from_snapshot(snap) as c:  # its RAM mapped from the file, then
            for _ in range(2):                   # restores copy what the guest wrote
                assert syncs(c.run(timeout=30)) == want
                assert 0 < c.restore(snap) < 64
        snap.vcpus[0].regs["r15"] = 0x1234_5678
        with Machine.from_snapshot(snap) as c:
            assert c.vcpus[0].get_regs()["r15"] == 0x1234_5678
    finally:
        snap.close()
    good = path.read_bytes()
    path.write_bytes(_rewrite(good, lambda m: _device(m, "uart").update(base=0x2F8)))
    with pytest.raises(SnapshotError, match="uart"):
        Machine.from_snapshot(path)
    path.write_bytes(good)
    image.write_bytes((guests / "hello.elf").read_bytes())
    with Machine.from_snapshot(path) as c:
        assert c.symbols is not None and c.symbols.address_of("host_page") is None
        assert c.symbols.address_of("main") is not None
    image.unlink()
    with Machine.from_snapshot(path) as c:
        assert c.image is None and c.symbols is None
        assert syncs(c.run(timeout=30)) == want



def test_a_restore_goes_on_past_an_msr_kvm_refuses(guests: Path) -> None:
    """KVM_SET_MSRS stops at the first MSR KVM refuses: the restore (one native call while
    KVM takes every MSR) skips that one and still sets the MSRs after it, the pending events
    and the MP state, and the guest goes on as it would have."""
    bogus, sysenter_cs = 0xDEAD_0000, 0x174
    with Machine.from_file(guests / "hello.elf") as probe:
        if probe.vcpus[0].set_msrs({bogus: 1}) != 0:
            pytest.skip(f"this KVM takes MSR {bogus:#x} (ignore_msrs)")
    with boot_to_sync(guests / "snapshot.elf") as m:
        snap = m.snapshot()
        want = syncs(m.run(timeout=30))
    st = snap.vcpus[0]
    assert sysenter_cs in st.msrs
    st.msrs = {bogus: 1, **st.msrs, sysenter_cs: 0x10}
    with Machine.from_snapshot(snap) as c:
        assert c.vcpus[0].get_msrs([sysenter_cs]) == {sysenter_cs: 0x10}
        assert c.vcpus[0].get_mp_state() == st.mp_state
        assert syncs(c.run(timeout=30)) == want



def test_a_pc_clone_keeps_the_guests_firmware_memory(guests: Path, tmp_path: Path) -> None:
    """Regression: a clone of a PC-platform snapshot set up a fresh PC platform, whose
    firmware tables (the IVT, ACPI) were written over the RAM mapped from the file, so the
    clone saw a fresh machine's IVT instead of the one the guest had (its own vectors, the
    waking vector it put in the FACS)."""
    path = tmp_path / "pc.snap"
    with boot_to_sync(guests / "snapshot.flat") as m:
        assert m.pc is not None
        fresh = m.memory.read_int(0, 8)
        m.memory.write_int(0, 8, 0xDEAD_BEEF_0000_0001)  # as a guest's own IVT entry
        m.save_snapshot(path)
        want = syncs(m.run(timeout=30))
    assert fresh != 0xDEAD_BEEF_0000_0001
    with Machine.from_snapshot(path) as c:
        assert c.memory.read_int(0, 8) == 0xDEAD_BEEF_0000_0001
        assert syncs(c.run(timeout=30)) == want
    snap = load(path)
    try:
        with Machine.from_snapshot(snap) as c:  # a loaded snapshot: restorable again
            assert c.memory.read_int(0, 8) == 0xDEAD_BEEF_0000_0001
            assert syncs(c.run(timeout=30)) == want
            c.restore(snap)
            assert c.memory.read_int(0, 8) == 0xDEAD_BEEF_0000_0001
    finally:
        snap.close()


def test_cli_save_at_sync_and_from_snapshot(guests: Path, tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    r = pyvmm("run", "-v", "--cpus", "2", "--save-at-sync", "1", str(path), str(guests / "snapshot.elf"))
    assert r.returncode == 0, r.stderr
    assert f"snapshot saved to {path} at GUEST_SYNC 1" in r.stderr
    after = [line for line in r.stderr.splitlines() if "stage 2" in line or "stage 3" in line]
    c = pyvmm("run", "-v", "--from-snapshot", str(path))
    assert c.returncode == 0, c.stderr
    assert [line for line in c.stderr.splitlines() if "GUEST_SYNC" in line] == after
    assert pyvmm("run", "--from-snapshot", str(path), str(guests / "hello.elf")).returncode == 2
    r = pyvmm("run", "--save-at-sync", "9", str(path), str(guests / "hello.elf"))
    assert r.returncode == 0 and "never reached GUEST_SYNC 9" in r.stderr


def _rewrite(data: bytes, edit: Callable[[dict[str, Any]], object],
             text: Callable[[bytes], bytes] = lambda body: body) -> bytes:
    """The snapshot with its metadata edited (then its text, for what JSON cannot say)
    and written back whole: the header gets the new metadata length, and the RAM moves by
    whole pages (its offsets with it) when the metadata outgrows the gap before it.  So the
    file is exactly the case ``edit`` names, on every host (an edit in place grew the JSON
    where the host's CPU name is short, and the file was "not JSON" instead)."""
    n = HEADER.unpack_from(data)[3]
    meta = json.loads(data[HEADER.size:HEADER.size + n])
    start = min(off for _, _, off in meta["ram"])
    edit(meta)
    shift = 0
    while HEADER.size + len(body := text(json.dumps(meta).encode())) > start + shift:
        shift += PAGE
        for entry in meta["ram"] if isinstance(meta["ram"], list) else []:
            if isinstance(entry, list) and len(entry) >= 3 and isinstance(entry[2], int):
                entry[2] += PAGE
    head = bytearray(data[:HEADER.size])
    struct.pack_into("<Q", head, 16, len(body))
    return bytes(head) + body.ljust(start + shift - HEADER.size, b" ") + data[start:]


def _vcpu0(meta: dict[str, Any]) -> dict[str, Any]:
    d: dict[str, Any] = meta["vcpus"][0]["d"]
    return d


def _device(meta: dict[str, Any], prefix: str) -> dict[str, Any]:
    devices = meta["devices"]["d"]
    key = next(k for k in devices if k.startswith(prefix))
    state: dict[str, Any] = devices[key]["d"]
    return state


def _more_ram(meta: dict[str, Any]) -> None:
    """A machine shape with 4x the RAM the file holds (a clone mapped it all: SIGBUS)."""
    mem = meta["config"]["mem"] * 4
    meta["config"]["mem"] = mem
    meta["config"]["regions"] = [[0, mem]]


def _ram_past_end(meta: dict[str, Any]) -> None:
    _more_ram(meta)
    meta["ram"][0][1] = meta["config"]["mem"]


EDITS: dict[str, Callable[[dict[str, Any]], object]] = {
    "pyvmm": lambda m: m["host"].update(pyvmm="0.0.1"),
    "cpu": lambda m: m["host"].update(cpu="Some Other CPU"),
    "ram-offset": lambda m: m["ram"][0].__setitem__(2, 123),
    "vcpus": lambda m: m.update(vcpus=[]),
    "sregs": lambda m: _vcpu0(m).update(sregs={"b64": "AAAA"}),
    "encoding": lambda m: m.update(devices={"x": 1}),
    "host-list": lambda m: m.update(host=["pyvmm", "cpu"]),
    "regs-str": lambda m: _vcpu0(m)["regs"]["d"].update(rax="0x10"),
    "ram-missing": lambda m: m.update(ram=[]),
    "ram-extra": lambda m: m["ram"][0].append(0),
    "msr-negative": lambda m: _vcpu0(m)["msrs"]["p"][0].__setitem__(0, -1),
    "rip-2^64": lambda m: _vcpu0(m)["regs"]["d"].update(rip=1 << 64),
    "xcrs-17": lambda m: _vcpu0(m).update(xcrs={"p": [[i, 1] for i in range(17)]}),
    "mp-2^32": lambda m: _vcpu0(m).update(mp_state=1 << 32),
    "mem-string": lambda m: m["config"].update(mem="64M"),
    "mem-odd": lambda m: m["config"].update(mem=12345),
    "devices-deep": lambda m: _device(m, "uart").update(regs=json.loads("[" * 12 + "]" * 12)),
    "more-ram": _more_ram,
    "ram-past-end": _ram_past_end,
}


def _corrupt(src: Path, dst: Path, edit: str) -> Path:
    data = bytearray(src.read_bytes())
    if edit == "version":
        struct.pack_into("<I", data, 8, 99)
    elif edit == "truncate":
        del data[len(data) // 2:]
    elif edit == "meta-length":
        struct.pack_into("<Q", data, 16, 1 << 40)
    elif edit == "not-json":
        data[HEADER.size:HEADER.size + 10] = b"\xff" * 10
    elif edit == "json-deep":
        data = bytearray(_rewrite(bytes(data), lambda m: m.update(devices="@"),
                                  lambda body: body.replace(b'"@"', b"[" * 10**5 + b"]" * 10**5)))
    else:
        data = bytearray(_rewrite(bytes(data), EDITS[edit]))
    dst.write_bytes(data)
    return dst


@pytest.mark.parametrize("edit, says", [
    ("version", "snapshot format 99"), ("truncate", "truncated"), ("meta-length", "truncated"),
    ("not-json", "not JSON"), ("pyvmm", "pyvmm '0.0.1'"), ("cpu", "host CPU 'Some Other CPU'"),
    ("ram-offset", "truncated or corrupt"), ("vcpus", "vCPU states"), ("sregs", "corrupt"),
    ("encoding", "corrupt"),
    # issue 17: each of these was 125 "internal error" (or SIGBUS, 135) before the schema
    ("json-deep", "nests too deep"), ("host-list", "host is list"), ("regs-str", "rax is '0x10'"),
    ("ram-missing", "ram has 0 entries"), ("ram-extra", "ram[0] has 4 entries"),
    ("msr-negative", "index is -1"), ("rip-2^64", "rip is 18446744073709551616"),
    ("xcrs-17", "xcrs has 17 entries"), ("mp-2^32", "mp_state is 4294967296"),
    ("mem-string", "config.mem is '64M'"), ("mem-odd", "config.mem"),
    ("devices-deep", "nests deeper"), ("more-ram", "not the machine's"),
    ("ram-past-end", "end of the"),
])
def test_bad_snapshot_files_are_one_line(guests: Path, tmp_path: Path, edit: str, says: str) -> None:
    good = tmp_path / "good.snap"
    with boot_to_sync(guests / "snapshot.elf") as m:
        m.snapshot().save(good)
    bad = _corrupt(good, tmp_path / f"{edit}.snap", edit)
    r = pyvmm("run", "--from-snapshot", str(bad))
    assert r.returncode == 120, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    with pytest.raises(SnapshotError, match=re.escape(says)):
        Machine.from_snapshot(bad)


def test_ram_past_the_file_is_refused_before_it_is_mapped(guests: Path, tmp_path: Path) -> None:
    """Regression (issue 17): metadata claiming more RAM than the file holds was mapped
    as it was, and the first touch of the missing part killed pyvmm with SIGBUS (135):
    on --from-snapshot, on Machine.from_snapshot(...).snapshot() and on --core."""
    good = tmp_path / "good.snap"
    with boot_to_sync(guests / "snapshot.elf") as m:
        m.snapshot().save(good)
    bad = _corrupt(good, tmp_path / "big.snap", "more-ram")
    code = textwrap.dedent(f"""
        from pyvmm.machine import Machine
        from pyvmm.snapshot import SnapshotError
        try:
            Machine.from_snapshot({str(bad)!r}).snapshot()
        except SnapshotError as e:
            print("refused:", e)
    """)
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0 and "refused:" in out.stdout, (out.returncode, out.stderr)
    r = pyvmm("run", "--core", str(tmp_path / "core"), "--from-snapshot", str(bad))
    assert r.returncode == 120 and "not the machine's" in r.stderr, (r.returncode, r.stderr)


@pytest.mark.parametrize("device, edit", [
    ("rtc", {"index": 200}), ("rtc", {"_last_c_read": 1e999}), ("bochs-shutdown", {"matched": 99}),
    ("acpi-pm", {"cnt": 0x12345}), ("hpet", {"timers": [[0, 1 << 64, 0]] * 3}),
    ("hpet", {"conf": 0x80}), ("uart", {"base": 0x2F8}), ("pci-config", {"address": 1 << 40}),
])
def test_bad_device_states_are_refused_at_restore(guests: Path, tmp_path: Path, device: str,
                                                  edit: dict[str, Any]) -> None:
    """Regression (issue 17): device states from a file were taken if only their types
    matched, and blew up at the guest's next access to the device (125, or a traceback from
    the HPET's thread).  Each is refused when the snapshot is restored, with one line."""
    good = tmp_path / "good.snap"
    with boot_to_sync(guests / "snapshot.flat") as m:
        m.snapshot().save(good)
    bad = tmp_path / "bad.snap"
    bad.write_bytes(_rewrite(good.read_bytes(), lambda m: _device(m, device).update(edit),
                             lambda body: body.replace(b"Infinity", b"1e999")))  # JSON's infinity
    r = pyvmm("run", "--from-snapshot", str(bad))
    assert r.returncode == 120, r.stderr
    assert "corrupt" in r.stderr and device in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_a_closed_clone_holds_nothing_of_the_file(guests: Path, tmp_path: Path) -> None:
    """Regression (issue 17): a closed Machine.from_snapshot clone kept an fd and a mapping
    of the snapshot file until garbage collection."""
    path = tmp_path / "s.snap"
    with boot_to_sync(guests / "snapshot.elf") as m:
        m.snapshot().save(path)

    def holds() -> list[str]:
        fds = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
               if os.path.exists(f"/proc/self/fd/{fd}")]
        maps = Path("/proc/self/maps").read_text().splitlines()
        return [x for x in fds + maps if str(path) in x]

    clone = Machine.from_snapshot(path)
    try:
        assert clone.run(timeout=30).ok
    finally:
        clone.close()
    assert holds() == []  # the clone itself is still referenced: no help from the GC
    assert clone.memory.dirty_base is None


def test_a_closed_machine_keeps_no_snapshot_alive(guests: Path) -> None:
    """A machine's last snapshot is its dirty base (a copy of all of RAM): close() lets it
    go, as it does the machine's own RAM."""
    m = boot_to_sync(guests / "snapshot.elf")
    snap = weakref.ref(m.snapshot())
    assert snap() is not None
    m.close()
    assert snap() is None


def test_save_streams_ram(guests: Path, tmp_path: Path) -> None:
    """Regression (issue 17): --save-at-sync copied guest RAM into a snapshot in memory
    (and read every page of it, which allocates it) before writing the file, so saving
    peaked at twice the guest's RAM.  Now it streams what the guest ever wrote."""
    mem = 512 << 20

    def peak_kib(*args: str) -> int:
        code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
                "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        out = subprocess.run([sys.executable, "-c", code, str(Path(sys.executable).parent / "pyvmm"),
                              "run", "--mem", f"{mem >> 20}M", *args, str(guests / "snapshot.elf")],
                             capture_output=True, text=True, timeout=120)
        status, kib = out.stdout.split()
        assert status == "0", out.stderr
        return int(kib)

    plain = peak_kib()
    saving = peak_kib("--save-at-sync", "1", str(tmp_path / "s.snap"))
    assert saving - plain < (mem >> 10) // 8, (plain, saving)
    assert load(tmp_path / "s.snap").config["mem"] == mem


def test_not_a_snapshot(tmp_path: Path) -> None:
    for content in (b"", b"PYVMMSN", MAGIC, b"\x7fELF" + bytes(100)):
        p = tmp_path / "x.snap"
        p.write_bytes(content)
        with pytest.raises(SnapshotError):
            load(p)
    with pytest.raises(SnapshotError, match="cannot open"):
        load(tmp_path / "missing.snap")


def test_booted_guest_fixture_boots_once(pytester: pytest.Pytester, guests: Path) -> None:
    pytester.makepyfile(test_many=f"""
        import pytest
        GUEST = {str(guests / "snapshot.elf")!r}

        @pytest.mark.parametrize("i", range(5))
        def test_each(booted_guest, i):
            m = booted_guest(GUEST, at_sync=1)
            seen = []
            m.on_sync(lambda ev: seen.append(ev.args))
            r = m.run(timeout=30)
            assert r.ok and seen[0][:2] == (2, 1041)
            m.memory.write_int(m.symbols.address_of("counter"), 8, 7)  # undone next time

        def test_count(_pyvmm_booted):
            (b,) = _pyvmm_booted.values()
            assert (b.boots, b.restores) == (1, 4)
    """)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    r.assert_outcomes(passed=6)


def test_stop_from_a_sync_handler_stops_right_there(guests: Path) -> None:
    """Machine.stop() from a GUEST_SYNC handler must stop that vCPU before it enters the
    guest again.  Regression: the kick waited for the runner's thread, the guest ran on
    past the sync and read host_page before the host wrote it (and --save-at-sync and
    booted_guest snapshotted a guest already past its sync)."""
    for i in range(5):
        with boot_to_sync(guests / "snapshot.elf", cmdline="fuzz") as m:
            assert m.symbols is not None
            m.memory.write_int(m.symbols.address_of("host_page"), 8, 100 + i)
            r = m.run(timeout=30)
            assert syncs(r) == [(4, (4, (100 + i) * 3 + 41, (100 + i) ^ 0x5555))]
