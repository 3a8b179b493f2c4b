"""pyvmm.fuzz.Target (issue 21): guests/fuzzme.c, built with --coverage, run input after
input against one VM reset by snapshot; outcomes as a fuzzer counts them, coverage from
the guest's own map, hostile and broken guests refused before fuzzing, and the replay of
an input from the input point's snapshot (`pyvmm run --from-snapshot SNAP --input FILE`)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import pytest
from cli import COMMAND, pyvmm

from pyvmm.errors import ExitStatus
from pyvmm.fuzz import FuzzSetupError, Target
from pyvmm.fuzz.target import FUZZ_STAGE


@pytest.fixture(scope="module")
def target(guests):
    with Target(guests / "fuzzme.elf", timeout=1.0) as t:
        t.parsed = []  # the parser's GUEST_SYNC(2, n, sum of bytes)
        t.machine.on_sync(lambda ev: t.parsed.append(ev.args[1:]) if ev.stage == 2 else None)
        yield t


def test_an_input_reaches_the_parser_and_comes_back_with_its_coverage(target):
    r = target.run(b"hello")
    assert (r.status, r.signal, r.wait_status) == ("ok", 0, 0), r.reason
    assert r.event is not None and r.event.kind == "done"
    assert r.edges > 3  # the parser's blocks, at CPL3, in the guest's own map
    assert len(r.coverage) == target.map_size == 65536
    # the guest saw exactly these bytes: its GUEST_SYNC(2, n, sum) came before the done
    assert target.parsed[-1] == (5, sum(b"hello"))


def test_outcomes_are_the_signals_afl_expects(target):
    crash = target.run(b"CRASH")
    assert (crash.status, crash.signal) == ("crash", signal.SIGSEGV)
    assert "#PF" in crash.reason and "CPL3" in crash.reason
    abrt = target.run(b"ABRT")
    assert (abrt.status, abrt.signal, abrt.wait_status) == ("assert", signal.SIGABRT, signal.SIGABRT)
    exit7 = target.run(b"EXIT")
    assert (exit7.status, exit7.exit_code, exit7.wait_status) == ("ok", 7, 7 << 8)
    hang = target.run(b"HANG")
    assert (hang.status, hang.signal) == ("timeout", signal.SIGKILL)
    assert 0.9e9 < hang.exec_ns < 5e9
    assert target.run(b"hello").status == "ok"  # and the VM goes on after each


def test_coverage_tells_inputs_apart_and_starts_empty_every_time(target):
    a = bytes(target.run(b"hello").coverage)
    b = bytes(target.run(b"CRASH").coverage)
    assert a != b
    assert bytes(target.run(b"hello").coverage) == a  # nothing left over from the crash


def test_a_guest_that_wrecks_its_idt_and_runtime_is_reset_by_the_next_restore(target):
    r = target.run(b"SMASH")
    assert (r.status, r.signal) == ("crash", signal.SIGSEGV), r.reason
    for _ in range(3):
        assert target.run(b"hello").status == "ok"


def test_an_input_longer_than_the_buffer_is_cut_to_it(target):
    r = target.run(b"x" * 10000)
    assert r.status == "ok"
    assert target.parsed[-1] == (4096, 4096 * ord("x"))


def test_a_loop_harness_ends_each_input_at_its_next_fuzz_input(guests):
    with Target(guests / "fuzzme.elf", cmdline="loop") as t:
        for data in (b"one", b"CRASH", b"three"):
            r = t.run(data)
            assert r.status == ("crash" if data == b"CRASH" else "ok")
        assert r.event is not None and r.event.stage == FUZZ_STAGE


def test_cpl0_harness_works_too(guests):
    with Target(guests / "fuzzme.elf", cmdline="cpl0", timeout=20) as t:
        assert t.run(b"ab").status == "ok"
        assert t.run(b"ABRT").status == "assert"


@pytest.mark.parametrize("cmdline, words", [
    ("nosync", "never reached GUEST_FUZZ_INPUT"),
    ("badbuf", "not in guest RAM"),
])
def test_a_guest_that_cannot_be_fuzzed_is_one_clear_error_before_fuzzing(guests, cmdline, words):
    fds = len(os.listdir("/proc/self/fd"))
    with pytest.raises(FuzzSetupError, match=words):
        Target(guests / "fuzzme.elf", cmdline=cmdline)
    assert len(os.listdir("/proc/self/fd")) == fds
    p = pyvmm("fuzz-target", "--append", cmdline, str(guests / "fuzzme.elf"), input="x")
    assert p.returncode == ExitStatus.GUEST_IMAGE, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr


def test_fuzz_target_by_hand_dies_like_the_crashing_program_would(guests, tmp_path):
    elf = str(guests / "fuzzme.elf")
    assert pyvmm("fuzz-target", elf, input="hello").returncode == 0
    assert pyvmm("fuzz-target", elf, input="CRASH").returncode == -signal.SIGSEGV
    (tmp_path / "in").write_bytes(b"ABRT")
    assert pyvmm("fuzz-target", elf, str(tmp_path / "in")).returncode == -signal.SIGABRT
    p = pyvmm("fuzz-target", "--timeout", "0.5", elf, input="HANG")
    assert p.returncode == ExitStatus.TIMEOUT, p.stderr


def test_an_input_replays_from_the_snapshot_to_the_same_status_and_a_core(guests, tmp_path):
    elf, snap = str(guests / "fuzzme.elf"), str(tmp_path / "snap")
    assert pyvmm("fuzz-target", "--save-snapshot", snap, elf, input="hello").returncode == 0
    for word, status in ((b"hello", 0), (b"CRASH", ExitStatus.GUEST_ASSERT),
                         (b"ABRT", ExitStatus.GUEST_ASSERT)):
        (tmp_path / "in").write_bytes(word)
        core = tmp_path / f"core-{word.decode()}"
        p = pyvmm("run", "--from-snapshot", snap, "--input", str(tmp_path / "in"), "--core", str(core))
        assert p.returncode == status, p.stderr
        assert core.exists() == (status != 0)
    p = pyvmm("run", "--from-snapshot", snap, "--input", str(tmp_path / "in"), "--timeout", "1")
    assert "n == 0" in p.stderr  # the assertion's own words, as the fuzzer saw it
    # a snapshot taken anywhere else is refused in one line
    other = str(tmp_path / "other")
    assert pyvmm("run", str(guests / "snapshot.elf"), "--save-at-sync", "1", other).returncode == 0
    p = pyvmm("run", "--from-snapshot", other, "--input", str(tmp_path / "in"))
    assert p.returncode == ExitStatus.GUEST_IMAGE and "GUEST_FUZZ_INPUT" in p.stderr


def test_a_sync_handler_registered_after_a_snapshot_survives_its_restore(guests):
    # regression: the ucall device's state held its handler list, so a restore put back
    # the list as it was at the snapshot and dropped handlers registered since
    from pyvmm import Machine

    with Machine.from_file(guests / "snapshot.elf", cmdline="fuzz") as m:
        m.run_to_sync(1, timeout=30)
        snap = m.snapshot()
        seen = []
        m.on_sync(lambda ev: seen.append(ev.stage))
        m.restore(snap)
        assert m.run(timeout=30).status == "exit"
        assert 4 in seen


@pytest.mark.skipif(shutil.which("gdb") is None, reason="gdb not installed (apt-get install gdb)")
def test_a_crash_replays_into_a_gdb_session_at_the_fault(guests, tmp_path):
    elf, snap = guests / "fuzzme.elf", tmp_path / "snap"
    assert pyvmm("fuzz-target", "--save-snapshot", str(snap), str(elf), input="").returncode == 0
    (tmp_path / "crash").write_bytes(b"CRASH")
    stub = subprocess.Popen([*COMMAND, "run", "--gdb", "127.0.0.1:0", "--from-snapshot", str(snap),
                             "--input", str(tmp_path / "crash")], stderr=subprocess.PIPE, text=True)
    try:
        assert stub.stderr is not None
        m = re.search(r"gdb stub on 127\.0\.0\.1:(\d+)", stub.stderr.readline())
        assert m, "no port announced"
        out = subprocess.run(["gdb", "-nx", "-batch", "-ex", f"target remote 127.0.0.1:{m.group(1)}",
                              "-ex", "hbreak idt_report_unhandled", "-ex", "continue",
                              "-ex", "p/x r->cs", "-ex", "info symbol r->rip", str(elf)],
                             capture_output=True, text=True, timeout=120).stdout
    finally:
        stub.kill()
        stub.wait()
    # stopped where the runtime reports the fault: the frame is user mode's (CS RPL 3) and
    # its RIP is in the parser, as the fuzzer's crash said
    assert "Breakpoint 1, idt_report_unhandled" in out, out
    cs = re.search(r"\$1 = (0x[0-9a-f]+)", out)
    assert cs and int(cs.group(1), 16) & 3 == 3 and "parse" in out, out


def test_fuzz_target_refuses_bad_arguments_in_one_line(guests, tmp_path):
    elf = str(guests / "fuzzme.elf")
    for args, status in (([elf, str(tmp_path / "missing")], ExitStatus.USAGE),
                         (["--timeout", "-1", elf], ExitStatus.USAGE),
                         (["--mem", "lots", elf], ExitStatus.USAGE),
                         (["--save-snapshot", str(tmp_path / "no" / "dir" / "snap"), elf],
                          ExitStatus.OUTPUT),
                         ([str(tmp_path)], ExitStatus.USAGE)):
        p = pyvmm("fuzz-target", *args, input="hello")
        assert p.returncode == status, (args, p.returncode, p.stderr)
        assert "Traceback" not in p.stderr and p.stderr.strip().count("\n") <= 1, p.stderr


def test_coverage_read_after_the_target_closed_is_an_error_not_a_crash(guests):
    """The result's coverage is a view into guest RAM: read after close() it killed the
    process with SIGSEGV (the RAM was unmapped under it)."""
    code = ("from pyvmm.fuzz import Target\n"
            f"with Target({str(guests / 'fuzzme.elf')!r}) as t:\n"
            "    r = t.run(b'hello')\n"
            "try:\n"
            "    r.edges\n"
            "except ValueError as e:\n"
            "    print('refused:', e)\n")
    p = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and "refused: " in p.stdout, (p.returncode, p.stderr)
