"""`pyvmm fuzz-target` driven by Debian's real AFL++ (issue 21): afl-fuzz finds a crash in
guests/fuzzme.c through the forkserver and saves it with the signal AFL expects, the crash
replays; afl-showmap, afl-tmin and afl-cmin work through the same target, a hang is a
timeout that leaves the VM usable, and two instances (-M/-S) share one output directory.
Every afl-fuzz run is bounded (-V seconds).  The tests skip, naming afl-fuzz, where AFL++
is not installed (apt-get install afl++)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli import COMMAND, pyvmm

AFL = shutil.which("afl-fuzz")
needs_afl = pytest.mark.skipif(AFL is None, reason="afl-fuzz not installed (apt-get install afl++)")
pytestmark = needs_afl


def afl_env(**extra: str) -> dict[str, str]:
    """AFL++ told that this target is a script (its instrumentation is in the guest), with
    no UI, no CPU-governor check, no core pinning (the host is shared) and no complaint
    about core_pattern (cores are the guest's, written by pyvmm)."""
    env = dict(os.environ, AFL_SKIP_BIN_CHECK="1", AFL_NO_UI="1", AFL_SKIP_CPUFREQ="1",
               AFL_NO_AFFINITY="1", AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES="1",
               AFL_FORKSRV_INIT_TMOUT="60000", AFL_NO_AUTODICT="1")
    # pyvmm's console script runs this interpreter: its directory first on PATH
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    env.update(extra)
    return env


def target(guests: Path) -> list[str]:
    return [*COMMAND, "fuzz-target", str(guests / "fuzzme.elf")]


def seeds(tmp_path: Path, name: str, *inputs: bytes) -> Path:
    d = tmp_path / name
    d.mkdir()
    for i, data in enumerate(inputs):
        (d / f"seed{i}").write_bytes(data)
    return d


def afl_fuzz(*args: str, seconds: int, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["afl-fuzz", "-V", str(seconds), *args], capture_output=True, text=True,
                          env=afl_env(), timeout=seconds + 120, **kw)  # type: ignore[call-overload]


def stats(out: Path) -> dict[str, str]:
    lines = (out / "fuzzer_stats").read_text().splitlines()
    return {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in lines)}


def test_afl_fuzz_finds_the_crash_and_it_replays(guests, tmp_path):
    # "CRASG" is one arithmetic step from "CRASH": -D's deterministic stages reach it at once
    inp, out = seeds(tmp_path, "in", b"CRASG"), tmp_path / "out"
    p = afl_fuzz("-D", "-i", str(inp), "-o", str(out), "-t", "1000", "--", *target(guests),
                 seconds=15)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "fork server is up" in p.stdout and "SHARED MEMORY FUZZING" in p.stdout
    s = stats(out / "default")
    assert int(s["execs_done"]) > 100 and int(s["saved_crashes"]) >= 1, s
    crashes = [c for c in (out / "default" / "crashes").iterdir() if c.name.startswith("id:")]
    assert crashes and all(",sig:11," in c.name for c in crashes), crashes
    data = crashes[0].read_bytes()
    assert data.startswith(b"CRASH")
    # the same input by hand dies of SIGSEGV, and replays from the input point's snapshot
    snap = tmp_path / "snap"
    r = pyvmm("fuzz-target", "--save-snapshot", str(snap), str(guests / "fuzzme.elf"),
              str(crashes[0]))
    assert r.returncode == -signal.SIGSEGV, r.stderr
    r = pyvmm("run", "--from-snapshot", str(snap), "--input", str(crashes[0]), "--core",
              str(tmp_path / "core"))
    assert r.returncode == 126 and "#PF" in r.stderr and (tmp_path / "core").exists(), r.stderr


def test_afl_showmap_sees_the_guests_edges_and_its_crashes(guests, tmp_path):
    maps = {}
    for word in (b"hello", b"hellp", b"CRASH", b"ABRT"):
        m = tmp_path / f"map-{word.decode()}"
        p = subprocess.run(["afl-showmap", "-q", "-t", "5000", "-o", str(m), "--", *target(guests)],
                           input=word, capture_output=True, env=afl_env(), timeout=120)
        maps[word] = (p.returncode, m.read_text().split())
    assert maps[b"hello"][0] == 0 and len(maps[b"hello"][1]) > 3
    assert maps[b"hello"][1] == maps[b"hellp"][1]  # same path, same edges
    assert maps[b"CRASH"][0] == 2 and maps[b"ABRT"][0] == 2  # crashes (SIGSEGV, SIGABRT)
    assert maps[b"CRASH"][1] != maps[b"hello"][1]


def test_a_hang_is_a_timeout_and_the_next_input_runs(guests, tmp_path):
    # afl-showmap -i serves every file through one forkserver: after the hang (killed at -t
    # by AFL, through the decoy pid) the same VM must run the next input normally
    inp = seeds(tmp_path, "in", b"HANG", b"hello")
    t0 = time.monotonic()
    p = subprocess.run(["afl-showmap", "-t", "500", "-i", str(inp), "-o", str(tmp_path / "maps"),
                        "--", *target(guests)], capture_output=True, text=True, env=afl_env(),
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert time.monotonic() - t0 < 60
    hello = (tmp_path / "maps" / "seed1").read_text().split()
    assert len(hello) > 3


def test_afl_tmin_and_afl_cmin_work_through_the_target(guests, tmp_path):
    (tmp_path / "crash").write_bytes(b"CRASH" + b"z" * 40)
    p = subprocess.run(["afl-tmin", "-t", "5000", "-i", str(tmp_path / "crash"), "-o",
                        str(tmp_path / "min"), "--", *target(guests)],
                       capture_output=True, text=True, env=afl_env(), timeout=300)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert (tmp_path / "min").read_bytes() == b"CRASH"
    inp = seeds(tmp_path, "cmin-in", b"hello", b"hellp", b"EXIT")
    p = subprocess.run(["afl-cmin", "-t", "5000", "-i", str(inp), "-o", str(tmp_path / "cmin-out"),
                        "--", *target(guests)], capture_output=True, text=True,
                       env=afl_env(AFL_ALLOW_TMP="1"), timeout=300)  # tmp_path may be in /tmp
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    kept = sorted(f.name for f in (tmp_path / "cmin-out").iterdir())
    assert len(kept) == 2 and "seed2" in kept, kept  # hello and hellp: one path


def test_two_instances_share_a_corpus_main_and_secondary(guests, tmp_path):
    inp, out = seeds(tmp_path, "in", b"hello"), tmp_path / "out"
    procs = []
    try:
        # the secondary starts while the main runs and imports its queue first (AFL++'s own
        # sync, AFL_IMPORT_FIRST: at once rather than after AFL's sync interval)
        for role, name, env in (("-M", "main", afl_env()), ("-S", "second", afl_env(AFL_IMPORT_FIRST="1"))):
            procs.append(subprocess.Popen(
                ["afl-fuzz", "-V", "12", "-i", str(inp), "-o", str(out), role, name, "--",
                 *target(guests)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env))
            time.sleep(5)
        logs = [p.communicate(timeout=200)[0].decode(errors="replace") for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    for name in ("main", "second"):
        assert int(stats(out / name)["execs_done"]) > 100
    # the secondary read the main instance's queue (AFL++ notes it in .synced/<name>)
    assert (out / "second" / ".synced" / "main").exists(), logs[1][-2000:]


def test_the_example_builds_and_its_bug_crashes_both_builds(tmp_path):
    """examples/fuzz-parser: the seeds parse, the planted bug's input crashes the guest (the
    fuzzer's SIGSEGV) and the native afl-cc build alike (finding it takes afl-fuzz a minute
    or two here: bench/fuzz.py measures that, not this test)."""
    from pyvmm.guest import build

    ex = Path(__file__).resolve().parents[2] / "examples" / "fuzz-parser"
    elf = build([ex / "guest.c"], tmp_path / "tlv.elf", coverage=True,
                user_sources=[ex / "harness.c", ex / "tlv.c"])
    crash = tmp_path / "crash"
    crash.write_bytes(b"TLV1\x01B\x04xFZ\x01")
    for seed in sorted((ex / "seeds").iterdir()):
        assert pyvmm("fuzz-target", str(elf), str(seed)).returncode == 0, seed
    r = pyvmm("fuzz-target", str(elf), str(crash))
    assert r.returncode == -signal.SIGSEGV and "#PF" in r.stderr, r.stderr
    if shutil.which("afl-cc"):
        native = tmp_path / "tlv-native"
        subprocess.run(["afl-cc", "-O2", "-o", str(native), str(ex / "native.c"), str(ex / "tlv.c")],
                       check=True, capture_output=True, env=afl_env())
        with crash.open("rb") as f:
            assert subprocess.run([str(native)], stdin=f, timeout=60).returncode == -signal.SIGSEGV
