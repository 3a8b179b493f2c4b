"""Snapshots on the real /dev/kvm: the guest (guests/snapshot.c) cannot tell it was
restored or cloned; files are checked like any untrusted input."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pyvmm.machine import Machine
from pyvmm.vstate.snapshot import HEADER, MAGIC, SnapshotError, load
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


def _corrupt(src: Path, dst: Path, edit: str) -> Path:
    data = bytearray(src.read_bytes())
    n = HEADER.unpack_from(data)[3]
    meta = json.loads(bytes(data[HEADER.size:HEADER.size + n]))
    if edit == "version":
        struct.pack_into("<I", data, 8, 99)
    elif edit == "truncate":
        del data[len(data) // 2:]
    elif edit == "meta-length":
        struct.pack_into("<Q", data, 16, 1 << 40)
    elif edit == "not-json":
        data[HEADER.size:HEADER.size + 10] = b"\xff" * 10
    else:
        if edit == "pyvmm":
            meta["host"]["pyvmm"] = "0.0.1"
        elif edit == "cpu":
            meta["host"]["cpu"] = "Some Other CPU"
        elif edit == "ram-offset":
            meta["ram"][0][2] = 123
        elif edit == "vcpus":
            meta["vcpus"] = meta["vcpus"][:0]
        elif edit == "sregs":
            meta["vcpus"][0]["d"]["sregs"] = {"b64": "AAAA"}
        elif edit == "encoding":
            meta["devices"] = {"x": 1}
        body = json.dumps(meta).encode()
        assert len(body) <= n + 64
        body = body.ljust(n)
        data[HEADER.size:HEADER.size + n] = body
    dst.write_bytes(data)
    return dst


@pytest.mark.parametrize("edit, says", [
    ("version", "snapshot format 99"), ("truncate", "truncated"), ("meta-length", "truncated"),
    ("not-json", "not JSON"), ("pyvmm", "pyvmm '0.0.1'"), ("cpu", "host CPU 'Some Other CPU'"),
    ("ram-offset", "truncated or corrupt"), ("vcpus", "vCPU states"), ("sregs", "corrupt"),
    ("encoding", "corrupt"),
])
def test_bad_snapshot_files_are_one_line(guests: Path, tmp_path: Path, edit: str, says: str) -> None:
    good = tmp_path / "good.snap"
    with boot_to_sync(guests / "snapshot.elf") as m:
        m.snapshot().save(good)
    bad = _corrupt(good, tmp_path / f"{edit}.snap", edit)
    r = pyvmm("run", "--from-snapshot", str(bad))
    assert r.returncode == 120, r.stderr
    assert says in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


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
