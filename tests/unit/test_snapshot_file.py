"""The snapshot file format without KVM (pyvmm/snapshot_file.py): a snapshot built here, of
the sizes KVM's structs have, written and read back; a seeded fuzz of the reader (every
mutated file loads or is one SnapshotError, never another exception); writing that never
leaves a temporary file or replaces what is not a regular file; device states checked for
range, not only type.  Before issue 17 a hostile file gave 125 "internal error"
(RecursionError, AttributeError, KeyError, ValueError, OverflowError, IndexError)."""

from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import stat
import struct
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pyvmm.devices.acpi_pm import AcpiPm
from pyvmm.devices.bochs_shutdown import BochsShutdown
from pyvmm.devices.hpet import Hpet
from pyvmm.devices.rtc import Rtc
from pyvmm.devices.uart import Uart16550
from pyvmm.errors import Interrupted
from pyvmm.kvm.native import ffi
from pyvmm.kvm.vcpu import REGS
from pyvmm.snapshot import Snapshot, VcpuState
from pyvmm.snapshot_file import HEADER, PAGE, SnapshotError, read, write

MEM = 16 * PAGE


def _bytes(ctype: str, fill: int = 0) -> bytes:
    return bytes([fill]) * int(ffi.sizeof(ctype))


def sample() -> Snapshot:
    """A two-vCPU snapshot with a kernel irqchip and PIT, a few device states, and RAM with
    data in two pages (the rest zero: holes in the file)."""
    vcpus = [VcpuState({r: i + 1 for i, r in enumerate(REGS)}, _bytes("struct kvm_sregs", 1),
                       _bytes("struct kvm_fpu"), _bytes("struct kvm_xsave", 2), {0: 1},
                       _bytes("struct kvm_lapic_state", 3), {0x10: 5, 0xC0000080: 0x500},
                       _bytes("struct kvm_vcpu_events"), n, _bytes("struct kvm_debugregs"))
             for n in (0, 1)]
    ram = bytearray(MEM)
    ram[PAGE:PAGE + 4] = b"page"
    ram[-1] = 0xAA
    config = {"mem": MEM, "cpus": 2, "irqchip": "kernel", "pit": True, "pc": True,
              "cpu_features": "", "cmdline": "x", "image": "", "format": "",
              "regions": [[0, MEM]]}
    devices = {"uart@pio:0x3f8": {"base": 0x3F8, "regs": {1: 0, 3: 3, "dll": 1}},
               "rtc@pio:0x70": {"index": 0, "cmos": bytearray(128), "_last_c_read": 1.5},
               "hpet@mmio:0xfed00000": {"conf": 0, "isr": 0, "counter": 7,
                                        "timers": [[0x30, 2, 0]] * 3}}
    return Snapshot(config, vcpus, [_bytes("struct kvm_irqchip")] * 3,
                    _bytes("struct kvm_pit_state2"), _bytes("struct kvm_clock_data"), devices,
                    [(0, memoryview(ram))])


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("snap") / "good.snap"
    write(sample(), path)
    return path.read_bytes()


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "s.snap"
    write(sample(), path)
    want = sample()
    snap = read(path)
    try:
        assert snap.vcpus == want.vcpus and snap.irqchips == want.irqchips
        assert snap.pit == want.pit and snap.clock == want.clock
        assert snap.devices["uart@pio:0x3f8"] == want.devices["uart@pio:0x3f8"]
        assert [(g, bytes(v)) for g, v in snap.ram] == [(g, bytes(v)) for g, v in want.ram]
        assert not snap.trusted
    finally:
        snap.close()
    assert os.stat(path).st_blocks * 512 < MEM  # the zero pages are holes


def _meta(data: bytes) -> Any:
    n = HEADER.unpack_from(data)[3]
    return json.loads(data[HEADER.size:HEADER.size + n])


def _with_meta(data: bytes, meta: Any, text: Any = lambda body: body) -> bytes:
    """``data`` with new metadata (its text then changed by ``text``, for what JSON cannot
    say); the RAM moved by whole pages (offsets too) to fit."""
    start = min(off for _, _, off in _meta(data)["ram"])
    shift = 0
    while HEADER.size + len(body := text(json.dumps(meta).encode())) > start + shift:
        shift += PAGE
        for e in meta.get("ram", []) if isinstance(meta, dict) and isinstance(
                meta.get("ram"), list) else []:
            if isinstance(e, list) and len(e) > 2 and type(e[2]) is int:
                e[2] += PAGE
    head = bytearray(data[:HEADER.size])
    struct.pack_into("<Q", head, 16, len(body))
    return bytes(head) + body.ljust(start + shift - HEADER.size) + data[start:]


VALUES: list[Any] = [None, True, 0, -1, 1, 1 << 32, 1 << 63, 1 << 64, (1 << 64) - 1, 0.5, 1e308,
                     "", "0x10", "x" * 100, [], [0], [[[0]]], {}, {"b64": "AAAA"}, {"d": {}},
                     {"p": [[1, 2]]}, {"b64": "!!"}, {"p": [[-1, 0]]}, {"d": {"a": 1}}]


def _paths(v: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if len(path) > 12:
        return out
    if isinstance(v, dict):
        for k, x in v.items():
            out += _paths(x, (*path, k))
    elif isinstance(v, list):
        for i, x in enumerate(v[:4]):
            out += _paths(x, (*path, i))
    return out


def mutate_meta(meta: Any, rng: random.Random) -> Any:
    """1-3 structural changes: a value replaced (by a boundary number, another type, a
    deep nest), a key dropped or added, a list grown or emptied."""
    meta = copy.deepcopy(meta)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(meta)[1:])
        parent = meta
        for p in path[:-1]:
            parent = parent[p]
        key = path[-1]
        kind = rng.random()
        if kind < 0.6:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
        elif kind < 0.7:
            deep: Any = 0
            for _ in range(rng.choice((10, 100, 500))):
                deep = [deep]
            parent[key] = deep
        elif kind < 0.8 and isinstance(parent, dict):
            del parent[key]
        elif kind < 0.9 and isinstance(parent, dict):
            parent["extra"] = 1
        elif isinstance(parent[key], list):
            parent[key] = parent[key] * rng.choice((0, 2, 17))
        else:
            parent[key] = copy.deepcopy(rng.choice(VALUES))
    return meta


N = 1500


@pytest.mark.parametrize("seed", [17, 18])
def test_mutated_snapshots_load_or_are_refused(good: bytes, tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    meta = _meta(good)
    path = tmp_path / "m.snap"
    outcomes: Counter[str] = Counter()
    slowest = 0.0
    for i in range(N):
        if rng.random() < 0.8:
            data = _with_meta(good, mutate_meta(meta, rng))
        else:  # bytes: the header, the metadata's text, truncation
            b = bytearray(good)
            for _ in range(rng.randint(1, 8)):
                b[rng.randrange(min(len(b), 2 * PAGE))] = rng.getrandbits(8)
            if rng.random() < 0.3:
                del b[rng.randrange(1, len(b)):]
            data = bytes(b)
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            snap = read(path, check_host=rng.random() < 0.5)
        except SnapshotError as e:
            assert "\n" not in str(e)
            outcomes["refused"] += 1
        except Exception as e:  # anything else is a reader bug: name the file that did it
            pytest.fail(f"mutation {i} (seed {seed}): {type(e).__name__}: {e}")
        else:
            assert [len(v) for _, v in snap.ram] == [s for _, s in snap.config["regions"]]
            bytes(snap.ram[-1][1][-PAGE:])  # inside the file: no SIGBUS
            snap.close()
            outcomes["ok"] += 1
        slowest = max(slowest, time.perf_counter() - t0)
    assert outcomes["refused"] > N // 2 and sum(outcomes.values()) == N
    assert slowest < 1.0, f"one file took {slowest:.2f} s to load or refuse"


@pytest.mark.parametrize("edit, says", [
    (lambda m: m.update(host=["a"]), "host is list"),
    (lambda m: m["vcpus"][0]["d"]["regs"]["d"].update(rip=1 << 64), "rip is 18446744073709551616"),
    (lambda m: m["vcpus"][0]["d"]["regs"]["d"].update(rax="1"), "rax is '1'"),
    (lambda m: m["vcpus"][0]["d"].update(xcrs={"p": [[i, 0] for i in range(17)]}), "17 entries"),
    (lambda m: m["vcpus"][0]["d"].update(mp_state=1 << 32), "mp_state"),
    (lambda m: m["vcpus"][0]["d"]["msrs"]["p"][0].__setitem__(0, -1), "index is -1"),
    (lambda m: m["ram"][0].append(1), "ram[0] has 4 entries"),
    (lambda m: m.update(ram=[]), "ram has 0 entries"),
    (lambda m: m["config"].update(mem=MEM * 4, regions=[[0, MEM * 4]]), "not the machine's"),
    (lambda m: m["ram"][0].__setitem__(1, MEM * 4), "not the machine's"),
    (lambda m: m["config"].update(irqchip="split"), "irqchips has 3 entries"),
    (lambda m: m.update(pit=None), "pit state and config.pit disagree"),
    (lambda m: m["vcpus"][1]["d"].update(lapic={"b64": "AAAA"}), "lapic is 3 bytes"),
    (lambda m: m["devices"]["d"]["rtc@pio:0x70"]["d"].update(x={"q": 1}), "unknown value encoding"),
])
def test_schema_names_what_is_wrong(good: bytes, tmp_path: Path, edit: Any, says: str) -> None:
    meta = _meta(good)
    edit(meta)
    path = tmp_path / "bad.snap"
    path.write_bytes(_with_meta(good, meta))
    with pytest.raises(SnapshotError, match="corrupt") as e:
        read(path, check_host=False)
    assert says in str(e.value)


def test_nan_and_deep_json_are_refused(good: bytes, tmp_path: Path) -> None:
    path = tmp_path / "bad.snap"
    meta = {**_meta(good), "devices": {"d": {"rtc": {"d": {"t": "@"}}}}}
    for text, says in ((b"NaN", "NaN"), (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
                       (b"1e999", "is inf")):
        path.write_bytes(_with_meta(good, copy.deepcopy(meta),
                                    lambda body, t=text: body.replace(b'"@"', t)))
        with pytest.raises(SnapshotError, match=says):
            read(path, check_host=False)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """Opening a FIFO for reading waits for a writer: the reader must not."""
    fifo = tmp_path / "fifo.snap"
    os.mkfifo(fifo)
    got: list[BaseException] = []

    def reader() -> None:
        try:
            read(fifo)
        except SnapshotError as e:
            got.append(e)

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(10)
    assert not t.is_alive() and "not a regular file" in str(got[0])


# --- writing -------------------------------------------------------------------------------
@pytest.mark.parametrize("signal", [KeyboardInterrupt(), Interrupted(15, "SIGTERM"),
                                    Interrupted(1, "SIGHUP")])
def test_a_save_interrupted_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     signal: BaseException) -> None:
    """Regression (issue 17): a SIGINT/SIGTERM/SIGHUP during a save left FILE.PID.tmp."""
    path = tmp_path / "s.snap"
    path.write_bytes(b"old")

    def interrupted(*a: object) -> None:
        raise signal

    monkeypatch.setattr("pyvmm.snapshot_file._write_ram", interrupted)
    with pytest.raises(type(signal)):
        write(sample(), path)
    assert sorted(os.listdir(tmp_path)) == ["s.snap"] and path.read_bytes() == b"old"


def test_only_a_regular_file_is_replaced(tmp_path: Path) -> None:
    """Regression (issue 17): --save-at-sync to a character device node replaced the node
    with a regular file.  A FIFO or a directory is refused alike; a symlink to a regular
    file has its target replaced and stays a link."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    nodes = [fifo, tmp_path]
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        nodes.append(tmp_path / "null")
    except PermissionError:
        pass  # not root: the FIFO stands for every node that is not a regular file
    for node in nodes:
        mode = os.lstat(node).st_mode
        with pytest.raises(SnapshotError, match="not a regular file"):
            write(sample(), node)
        assert os.lstat(node).st_mode == mode
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    target = tmp_path / "target.snap"
    target.write_bytes(b"old")
    (tmp_path / "link.snap").symlink_to(target)
    write(sample(), tmp_path / "link.snap")
    assert (tmp_path / "link.snap").is_symlink() and read(target, check_host=False).vcpus


# --- device states ---------------------------------------------------------------------------
def _hpet() -> Hpet:
    return Hpet(lambda gsi, level: None)


@pytest.mark.parametrize("make, edit", [
    (lambda: Rtc(64 << 20), {"index": 200}), (lambda: Rtc(64 << 20), {"_last_c_read": math.nan}),
    (lambda: Rtc(64 << 20), {"_last_c_read": math.inf}), (lambda: Rtc(64 << 20), {"cmos": b"x"}),
    (lambda: Rtc(64 << 20), {"nope": 1}), (BochsShutdown, {"matched": 8}),
    (AcpiPm, {"cnt": 0x10000}), (AcpiPm, {"sts": -1}),
    (lambda: Uart16550(lambda b: None), {"base": 0x2F8}),
    (lambda: Uart16550(lambda b: None), {"regs": {1: 0x100, 3: 3, 4: 8, 7: 0, "dll": 1, "dlm": 0,
                                                  "fcr": 0}}),
    (_hpet, {"timers": [[0x30 | (0xFF0004 << 32), 1 << 64, 0]] * 3}),
    (_hpet, {"timers": [[0x30 | (0xFF0004 << 32), -1, 0]] * 3}),
    (_hpet, {"timers": [[0x30 | (0xFF0004 << 32) | 0x100, 1 << 40, 0]] * 3}),  # 32-bit mode
    (_hpet, {"timers": [[1 << 70, 0, 0]] * 3}), (_hpet, {"timers": [[0, 0, 0]] * 2}),
    (_hpet, {"conf": 0x80}), (_hpet, {"isr": 8}), (_hpet, {"counter": 1.5}),
])
def test_device_states_are_checked_for_range(make: Any, edit: dict[str, Any]) -> None:
    """Regression (issue 17): a state of the right type but out of range was taken, and the
    guest's next access to the device failed (IndexError, struct.error, a thread's
    traceback); now set_state refuses it and changes nothing."""
    dev = make()
    try:
        before = dev.state()
        with pytest.raises(ValueError):
            dev.set_state({**before, **edit})
        after = dev.state()
        if "counter" in after:  # the HPET's counter is the clock's
            before.pop("counter"), after.pop("counter")
        assert after == before
        dev.set_state(dev.state())  # its own state is always good
    finally:
        dev.close()


def test_a_restored_cmos_stays_writable() -> None:
    """A file's state has bytes where the device has a bytearray: set_state keeps the
    device's type (the CMOS became bytes, and the guest's next CMOS write a TypeError)."""
    rtc = Rtc(64 << 20)
    state = rtc.state()
    state["cmos"] = bytes(state["cmos"])
    rtc.set_state(state)
    rtc.apply_state(state)
    assert isinstance(rtc.cmos, bytearray)


def test_a_file_read_again_is_checked_again(good: bytes, tmp_path: Path) -> None:
    """A process keeps what it checked of a file's metadata (a clone loop reads one file
    thousands of times), by the metadata's exact bytes: the same path rewritten with one
    field made hostile, at the same length and modification time, is refused; a refused
    file is refused every time; the good bytes load again."""
    path = tmp_path / "s.snap"
    path.write_bytes(good)
    read(path).close()
    st = os.stat(path)
    assert b'"pit": true' in good
    bad = good.replace(b'"pit": true', b'"pit": 1234', 1)  # same length, same RAM offsets
    path.write_bytes(bad)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    for _ in range(2):
        with pytest.raises(SnapshotError, match=re.escape("config.pit is 1234")):
            read(path)
    path.write_bytes(good)
    read(path).close()


def test_each_read_of_a_file_is_its_own(tmp_path: Path) -> None:
    """What one read's snapshot is changed to never shows in the next read of the file
    (the checked metadata a process keeps is handed out as copies)."""
    path = tmp_path / "s.snap"
    write(sample(), path)
    first = read(path)
    first.config["mem"] = 1
    first.config["regions"][0][1] = 1
    first.devices["uart@pio:0x3f8"]["regs"][1] = 9
    first.devices["hpet@mmio:0xfed00000"]["timers"][0][0] = 9
    first.vcpus[0].regs["rax"] = 9
    first.vcpus[0].msrs.clear()
    first.vcpus[0].xcrs[0] = 9
    first.close()
    want = sample()
    second = read(path)
    try:
        assert second.vcpus == want.vcpus
        assert second.config["mem"] == MEM and second.config["regions"] == [[0, MEM]]
        assert second.devices["uart@pio:0x3f8"] == want.devices["uart@pio:0x3f8"]
        assert second.devices["hpet@mmio:0xfed00000"] == want.devices["hpet@mmio:0xfed00000"]
        assert not second.trusted
    finally:
        second.close()
