"""`pyvmm suite` and the pytest collector on real guests: pyvmm's own unittests.cfg and
manifest, a suite that fails in every way a suite can (a FAIL: line, a timeout, a crash,
unmatched output), JUnit read back with junitparser, TAP with tap.py, the output tree,
selection, and pytest used directly."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cli
import pytest
from junitparser import JUnitXml, Properties, Property
from tap.parser import Parser

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "guests" / "unittests.cfg"
MANIFEST = ROOT / "guests" / "pyvmm.toml"
OWN_RUNNABLE = 16  # entries of guests/unittests.cfg that run here; 5 more skip by design


def suite(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return cli.pyvmm("suite", *args, timeout=timeout, cwd=cwd)


@pytest.fixture
def failing(tmp_path: Path, guests: Path) -> Path:
    m = tmp_path / "failing.pyvmm.toml"
    m.write_text(f"""
[tests.unknown-mode]
kernel = "{guests}/mbtest.flat"
append = "bogus"
[tests.spins]
kernel = "{guests}/selftest.flat"
append = "spin"
timeout = 0.5
[tests.triple]
kernel = "{guests}/selftest.flat"
append = "triple"
[tests.fine]
kernel = "{guests}/hello.elf"
expect_output = "Hello"
[tests.wrong-output]
kernel = "{guests}/hello.elf"
expect_output = "Goodbye"
""")
    return m


def test_own_unittests_cfg_passes_with_junit_and_skips_named(guests, tmp_path):
    xml = tmp_path / "suite.xml"
    p = suite("-j2", "--junit", str(xml), str(CFG), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert f"SUMMARY: {OWN_RUNNABLE + 5} tests, {OWN_RUNNABLE} passed, 0 failed, 5 skipped" in p.stdout
    assert "SKIP intel-iommu (needs QEMU -machine q35; needs QEMU -device intel-iommu)" in p.stdout
    assert "PASS hpet (6 tests)" in p.stdout  # the kernel's SUMMARY, as run_tests.sh shows it
    suite_xml = next(iter(JUnitXml.fromfile(str(xml))))
    counts = (suite_xml.tests, suite_xml.failures, suite_xml.errors, suite_xml.skipped)
    assert counts == (OWN_RUNNABLE + 5, 0, 0, 5)
    cases = {c.name: c for c in suite_xml}
    edu = cases["edu"]
    assert edu.result[0].message == "needs QEMU -device edu"
    props = [(p.name, p.value) for props in cases["ioapic-pit"].iterchildren(Properties)
             for p in props.iterchildren(Property)]
    reports = [v for k, v in props if k == "pyvmm.report"]
    assert len(reports) == 4 and all(r.startswith("PASS: ") for r in reports)
    assert ("pyvmm.summary", "4 tests") in props
    assert "ioapic-pit" in cases["ioapic-pit"].system_out


def test_own_manifest_passes(guests, tmp_path):
    p = suite("-j2", str(MANIFEST), cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUMMARY: 8 tests, 8 passed, 0 failed, 0 skipped" in p.stdout


def test_failures_are_named_with_their_lines_and_reasons(failing, tmp_path):
    xml = tmp_path / "f.xml"
    p = suite("-j2", "--junit", str(xml), "-o", str(tmp_path / "out"), str(failing))
    assert p.returncode == 1, p.stdout + p.stderr
    summary = p.stdout[p.stdout.index("Failures:"):]
    assert 'FAIL unknown-mode: exit status 1, expected 0 (debug-exit value 1)\n' \
           '    FAIL: unknown mode "bogus"\n' in summary
    assert "TIMEOUT spins: exit status 124, expected 0 (guest did not stop within 0.5 s)" in summary
    assert "CRASH triple: exit status 123, expected 0 (triple fault" in summary
    assert "FAIL wrong-output: output does not match 'Goodbye'" in summary
    assert "1 passed, 4 failed, 1 timed out, 1 crashed, 0 skipped" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    cases = {c.name: c for c in next(iter(JUnitXml.fromfile(str(xml))))}
    assert cases["unknown-mode"].result[0].message == 'FAIL: unknown mode "bogus"'  # first failing line
    assert cases["triple"].result[0].message.startswith("exit status 123")
    assert "triple fault" in cases["triple"].system_err and cases["fine"].is_passed
    out = tmp_path / "out"
    assert (out / "triple" / "cmdline").read_text().startswith("pyvmm run ")
    assert "RIP=" in (out / "triple" / "stderr.log").read_text()
    assert "Hello" in (out / "fine" / "serial.log").read_text()
    assert (out / "spins" / "result").read_text().startswith("FAIL exit status 124")


def test_tap_stream_read_by_tap_py(failing):
    p = suite("-j1", "--tap", str(failing))
    assert p.returncode == 1, p.stderr
    lines = list(Parser().parse_text(p.stdout))
    tests = [x for x in lines if x.category == "test"]
    assert len(tests) == 5 and sum(not t.ok for t in tests) == 4
    assert next(x for x in lines if x.category == "plan").expected_tests == 5
    assert '    # Subtest: unknown-mode\n    not ok 1 - unknown mode "bogus"\n    1..1\n' in p.stdout


def test_kvm_unit_tests_verdicts_and_timeout_scale(guests, tmp_path):
    for k in ("mbtest.flat", "selftest.flat"):
        shutil.copy(guests / k, tmp_path / k)
    cfg = tmp_path / "unittests.cfg"
    cfg.write_text("[passes]\nfile = mbtest.flat\ntest_args = exit 0\n"
                   "[skips-itself]\nfile = mbtest.flat\ntest_args = 'exit 38'\n"
                   "[fails]\nfile = mbtest.flat\ntest_args = 'exit 5'\n"
                   "[powers-off]\nfile = mbtest.flat\ntest_args = shutdown\n"
                   "[hangs]\nfile = selftest.flat\ntest_args = spin\ntimeout = 2\n")
    p = suite("-j2", "--timeout-scale", "0.25", str(cfg))
    assert p.returncode == 1, p.stdout + p.stderr
    assert "PASS passes" in p.stdout
    assert "SKIP skips-itself (the test skipped itself (status 77))" in p.stdout
    assert "FAIL fails: exit status 11 (debug-exit value 5)" in p.stdout  # (5 << 1) | 1
    assert "FAIL powers-off: shutdown without debug-exit" in p.stdout
    assert "TIMEOUT hangs: timeout; duration=0.5s" in p.stdout


def test_selection_groups_globs_and_list(guests, tmp_path):
    p = suite("-j1", "-g", "firmware", str(CFG), "mbtest-a*", "mbtest-c*")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "SUMMARY: 2 tests, 2 passed" in p.stdout
    assert "PASS mbtest-acpi" in p.stdout and "PASS mbtest-cmos" in p.stdout
    p = suite("--list", "-g", "nodefault", str(CFG))
    assert p.stdout == "manual [nodefault]\n"  # a selected group runs its nodefault tests
    p = suite("--list", str(CFG), "e*")
    assert p.stdout == ("elf64-multiboot [contract]\nedu [pci]  SKIP: needs QEMU -device edu\n")
    p = suite(str(CFG), "no-such-test")
    assert p.returncode == 2 and "no tests in" in p.stderr and "no-such-test" in p.stderr


def test_run_unsupported_runs_what_would_skip(guests, tmp_path):
    p = suite("-j1", "--run-unsupported", str(CFG), "edu")
    assert p.returncode == 0 and "PASS edu" in p.stdout, p.stdout + p.stderr


def test_cpuid_the_host_cannot_hide_is_a_named_skip(guests, tmp_path):
    from pyvmm.doctor import host_features

    found = host_features().features["set-cpuid"]
    assert found.works is not None, found.detail  # a probe that could not run is an error
    ignored = found.data.get("ignored", [])
    honoured = found.data.get("honoured", [])
    shutil.copy(guests / "mbtest.flat", tmp_path / "mbtest.flat")
    cfg = tmp_path / "unittests.cfg"
    entries = [f"[hide-{f}]\nfile = mbtest.flat\nqemu_params = -cpu host,-{f}\ntest_args = info\n"
               for f in ignored + honoured]
    entries.append("[unknown-flag]\nfile = mbtest.flat\nqemu_params = -cpu max,+frobnicate\n")
    cfg.write_text("".join(entries))
    p = suite("-j1", str(cfg))
    for f in ignored:
        assert (f"SKIP hide-{f} (needs CPUID -{f}, but this host's KVM ignores KVM_SET_CPUID2 "
                f"for {f} (pyvmm doctor: set-cpuid))") in p.stdout
    for f in honoured:
        assert f"PASS hide-{f}" in p.stdout
    assert "SKIP unknown-flag (unknown CPU feature 'frobnicate'" in p.stdout


def test_pytest_collects_suites_directly(guests, failing, tmp_path):
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    base = [sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", "-c", os.devnull,
            "--rootdir", str(tmp_path)]
    p = subprocess.run([*base, "-q", "--pyvmm-suite", str(MANIFEST), "-k", "hello"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 0 and "2 passed, 6 deselected" in p.stdout, p.stdout + p.stderr
    p = subprocess.run([*base, "-q", str(failing), "-n", "2"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "pyvmm suite failures" in p.stdout and '    FAIL: unknown mode "bogus"' in p.stdout
    p = subprocess.run([*base, "-q", str(CFG), "-m", "smp"], capture_output=True, text=True,
                       cwd=tmp_path, env=env, timeout=120)
    deselected = OWN_RUNNABLE + 5 - 1
    assert p.returncode == 0 and f"1 passed, {deselected} deselected" in p.stdout, p.stdout + p.stderr


def test_bad_config_is_one_line_and_status_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[tests.a]\ncpus = 2\n")
    p = suite(str(bad))
    assert p.returncode == 1 and "ERROR bad.toml: " in p.stdout and "has no kernel" in p.stdout
    p = suite("--list", str(bad))
    assert p.returncode == 2 and p.stderr.strip().endswith("tests.a has no kernel")
    assert "Traceback" not in p.stdout + p.stderr


def test_sigterm_stops_the_suite_and_its_workers(guests, tmp_path):
    cfg = tmp_path / "slow.pyvmm.toml"
    cfg.write_text("".join(f'[tests.spin{i}]\nkernel = "{guests}/selftest.flat"\nappend = "spin"\n'
                           "timeout = 60\n" for i in range(2)))
    proc = subprocess.Popen([*cli.COMMAND, "suite", "-j2", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "interrupted (SIGTERM)" in err and "Traceback" not in out + err
    assert "INTERNALERROR" not in out + err
    left = subprocess.run(["pgrep", "-s", str(proc.pid)], capture_output=True, text=True)
    assert left.stdout == "", "workers left behind"


@pytest.mark.parametrize("mode, ran", [("plain", 2), ("--tap", 1)])
def test_reader_leaving_stops_the_suite_quietly(guests, tmp_path, mode, ran):
    """`pyvmm suite | head -1`: before, the plain output went on running every test and
    exited 0, and --tap ended in an INTERNALERROR traceback."""
    cfg = tmp_path / "s.pyvmm.toml"
    cfg.write_text(f'[tests.a]\nkernel = "{guests}/hello.elf"\n[tests.b]\nkernel = "{guests}/hello.elf"\n'
                   f'[tests.spins]\nkernel = "{guests}/selftest.flat"\nappend = "spin"\ntimeout = 60\n')
    xml = tmp_path / "r.xml"
    args = ["--tap"] if mode == "--tap" else []
    proc = subprocess.Popen([*cli.COMMAND, "suite", "-j1", *args, "--junit", str(xml), str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline()
    proc.stdout.close()
    _, err = proc.communicate(timeout=50)
    assert proc.returncode == 141 and err == b"", err.decode()
    assert next(iter(JUnitXml.fromfile(str(xml)))).tests == ran  # "spins" never started


def test_full_stdout_is_status_119(guests, tmp_path):
    with open("/dev/full", "w") as full:
        p = subprocess.run([*cli.COMMAND, "suite", "-j1", str(MANIFEST), "hello"], stdout=full,
                           stderr=subprocess.PIPE, text=True, timeout=60)
    assert p.returncode == 119 and "Traceback" not in p.stderr
    assert p.stderr == "pyvmm: cannot write the suite's output to stdout; the suite was stopped\n"


# --- hostile configs and outputs (none of these needs KVM: the entries skip or never run) ---

def one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stdout + p.stderr and "INTERNALERROR" not in p.stdout + p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = " ".join(shlex.quote(c) for c in cli.COMMAND)
    return subprocess.run(["bash", "-c", script.replace("PYVMM", cmd)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **env))


@pytest.fixture
def skipping(tmp_path: Path) -> Path:
    """A manifest whose one test skips: the suite machinery runs in full, no guest boots."""
    m = tmp_path / "s.pyvmm.toml"
    m.write_text('[tests.later]\nkernel = "k.elf"\nskip = "not today"\n')
    return m


@pytest.mark.parametrize("kind", ["dev-zero", "fifo"])
def test_config_that_is_no_file_is_one_line_and_status_2(tmp_path, kind):
    """Before: a symlink to /dev/zero was read until memory ran out; a FIFO blocked for ever."""
    cfg = tmp_path / "unittests.cfg"
    if kind == "dev-zero":
        cfg.symlink_to("/dev/zero")
    else:
        os.mkfifo(cfg)
    for args in (["--list"], ["-j1"]):
        p = suite(*args, str(cfg), timeout=30)
        assert p.returncode == 2, p.stdout + p.stderr
        assert one_line(p).endswith("unittests.cfg: not a regular file (a pipe, FIFO or device); "
                                    "a suite config must be a file")


@pytest.mark.parametrize("body, message", [
    ("mem = 64", 'mem must be a size with its unit, such as "64M" (did you mean "64M"?), not 64'),
    ("timeout = nan", "timeout nan is not a number of seconds between 0 and 604800 (7 days)"),
    ("timeout = inf", "timeout inf is not a number of seconds between 0 and 604800 (7 days)"),
    ("timeout = 1e308", "timeout 1e+308 is not a number of seconds between 0 and 604800 (7 days)"),
])
def test_manifest_values_are_checked_before_use(tmp_path, body, message):
    """Before: mem = 64 failed the test inside shlex, a NaN timeout never timed out, a deep
    array was 125 RecursionError."""
    m = tmp_path / "m.toml"
    m.write_text(f'[tests.a]\nkernel = "k.elf"\n{body}\n')
    p = suite("--list", str(m))
    assert p.returncode == 2 and one_line(p) == f"pyvmm: {m}: tests.a: {message}"
    p = suite("-j1", str(m))
    assert p.returncode == 1 and f"ERROR m.toml: {m}: tests.a: {message}" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr
    m.write_text('[tests.a]\nkernel = "k.elf"\ngroups = ' + "[" * 100_000 + "]" * 100_000 + "\n")
    p = suite("--list", str(m))
    assert p.returncode == 2 and one_line(p) == f"pyvmm: {m}: arrays or tables nested too deeply"


def test_output_paths_are_checked_before_any_test(skipping, tmp_path):
    """Before: -o under a file failed every test with a traceback, --junit /dev/full was 125."""
    (tmp_path / "afile").write_text("")
    cases = [(["-o", str(tmp_path / "afile")], "-o {}/afile: not a directory"),
             (["-o", str(tmp_path / "afile" / "sub")],
              "-o {}/afile/sub: cannot create the directory: Not a directory"),
             (["--junit", str(tmp_path)], "--junit {}: is a directory, not a file"),
             (["--junit", str(tmp_path / "nodir" / "r.xml")],
              "--junit {0}/nodir/r.xml: no directory {0}/nodir to write it in")]
    for args, message in cases:
        p = suite("-j1", *args, str(skipping))
        assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
        assert one_line(p) == "pyvmm: " + message.format(tmp_path)


def test_junit_that_cannot_be_written_is_119_after_the_summary(skipping):
    p = suite("-j1", "--junit", "/dev/full", str(skipping))
    assert p.returncode == 119, p.stdout + p.stderr
    assert "SKIP later (not today)" in p.stdout and "SUMMARY: 1 tests" in p.stdout
    assert one_line(p) == "pyvmm: cannot write JUnit XML to /dev/full: No space left on device"


def test_closed_stdout_is_119_and_closed_stderr_still_runs(skipping):
    """Before: with stdout closed the suite exited 0 (or 1); with stderr closed it was 125
    and ran nothing (pytest's faulthandler needs sys.stderr)."""
    p = shell(f"PYVMM suite -j1 {skipping} >&-; echo rc=$?")
    assert p.stdout == "rc=119\n"
    assert one_line(p) == "pyvmm: cannot write the suite's output: stdout is closed"
    p = shell(f"PYVMM suite -j1 {skipping} 2>&-; echo rc=$?")
    assert "SKIP later (not today)" in p.stdout and p.stdout.endswith("rc=0\n"), p.stdout
    p = shell(f"PYVMM suite -j1 --tap {skipping} <&- 2>&-; echo rc=$?")
    assert "ok 1 - later # SKIP not today" in p.stdout and p.stdout.endswith("rc=0\n"), p.stdout


def test_a_run_without_kvm_says_how_to_make_it_fail(tmp_path):
    m = tmp_path / "m.toml"
    m.write_text(f'[tests.a]\nkernel = "{tmp_path}/m.toml"\n[tests.b]\nkernel = "k"\nskip = "x"\n')
    hidden = {"PYVMM_KVM_DEVICE": str(tmp_path / "no-kvm")}
    p = cli.pyvmm("suite", "-j1", str(m), env=dict(hidden, PYVMM_REQUIRE_KVM="0"))
    assert p.returncode == 0, p.stdout + p.stderr
    assert one_line(p).endswith("; set PYVMM_REQUIRE_KVM=1 to make that a failure")
    assert one_line(p).startswith("pyvmm: no test ran: 1 of 2 skipped because KVM is unusable (")
    p = cli.pyvmm("suite", "-j1", str(m), env=dict(hidden, PYVMM_REQUIRE_KVM="1"))
    assert p.returncode == 1 and "FAIL a (PYVMM_REQUIRE_KVM=1 but KVM is unusable" in p.stdout
