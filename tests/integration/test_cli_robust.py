"""``pyvmm run`` under everything a user's shell can do to it: closed or full output,
signals at any moment, bad option values, files that are not guest images.  Each case is
a regression test for a failure found on the landed code (issue #8): one line, a
documented status, never a traceback, never a hang."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import time

import pytest
from cli import COMMAND, pyvmm

from pyvmm.errors import ExitStatus

# a pipe to a child left open is a failure, not a warning nobody reads (issue #17 found one
# here: a killed child's stdout and stderr were never closed)
pytestmark = [pytest.mark.filterwarnings("error::ResourceWarning"),
              pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")]


def one_line(p: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in p.stderr
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    return lines[0]


def shell(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    cmd = " ".join(f"'{c}'" for c in COMMAND)
    return subprocess.run(["bash", "-c", script.replace("PYVMM", cmd)], capture_output=True,
                          text=True, timeout=60, env=dict(os.environ, **env))


# --- output -----------------------------------------------------------------------
@pytest.mark.kvm
def test_closed_stdout(guests):
    p = shell(f"PYVMM run {guests}/hello.elf >&-; echo rc=$?")
    assert "rc=119" in p.stdout
    assert "cannot write guest output: Bad file descriptor" in one_line(p)


@pytest.mark.kvm
def test_stdout_pipe_closed_by_the_reader_is_quiet(guests):
    p = shell(f"PYVMM run {guests}/hostile.elf --append 'flood 1' | head -c 10; "
              "rc=${PIPESTATUS[0]}; echo; echo rc=$rc")
    assert p.stdout.startswith("abcdefghij") and "rc=141" in p.stdout
    assert p.stderr == ""


@pytest.mark.kvm
def test_full_stdout(guests):
    p = shell(f"PYVMM run {guests}/hello.elf >/dev/full; echo rc=$?")
    assert "rc=119" in p.stdout
    assert "No space left on device" in one_line(p)


@pytest.mark.kvm
def test_full_stderr_keeps_the_crash_status(guests):
    p = shell(f"PYVMM run {guests}/selftest.elf --append triple 2>/dev/full; echo rc=$?")
    assert "rc=123" in p.stdout


def test_info_into_a_closed_stdout():
    p = shell("PYVMM info >&-; echo rc=$?")
    assert "rc=119" in p.stdout and "Traceback" not in p.stderr


@pytest.mark.parametrize("args", ["--version", "--help", "run --help"])
def test_click_s_own_output_into_a_full_stdout(args):
    """Regression: click's --help and --version text into a full stdout was "internal
    error: OSError" and status 125; it is one line and 119, as for any other output."""
    p = shell(f"PYVMM {args} >/dev/full; echo rc=$?")
    assert "rc=119" in p.stdout
    assert one_line(p) == "pyvmm: cannot write output: No space left on device"


# --- signals ------------------------------------------------------------------------
def start(*args: str) -> subprocess.Popen[bytes]:
    # SIGINT as from a terminal: not inherited as ignored, whatever ran pytest
    return subprocess.Popen([*COMMAND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_until(p: subprocess.Popen[bytes], want: bytes, limit: float) -> bytes:
    got = b""
    deadline = time.monotonic() + limit
    assert p.stdout is not None
    while want not in got and time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 0.05)[0]:
            chunk = os.read(p.stdout.fileno(), 4096)
            if not chunk:
                break
            got += chunk
    return got


@pytest.mark.kvm
def test_a_partial_line_shows_at_once(guests):
    """"prompt> " has no newline and the guest then halts: it used to stay in the C
    loop's buffer until the run ended."""
    p = start("run", str(guests / "hostile.elf"), "--append", "partial", "--timeout", "20")
    try:
        assert read_until(p, b"prompt> ", 5.0) == b"prompt> "
    finally:
        p.kill()
        p.communicate()  # reaps it and closes both pipes


@pytest.mark.kvm
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_during_a_run(guests, sig):
    p = start("run", str(guests / "hostile.elf"), "--append", "partial", "--timeout", "20")
    assert read_until(p, b"prompt> ", 10.0) == b"prompt> "
    p.send_signal(sig)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + sig
    assert err.decode().strip() == f"pyvmm: interrupted ({sig.name})"


def _caught(pid: int, sig: int) -> bool:
    """Whether process ``pid`` has a handler for ``sig`` (SigCgt in /proc/PID/status)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            line = next(li for li in f if li.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(int(line.split()[1], 16) >> (sig - 1) & 1)


@pytest.mark.kvm
@pytest.mark.parametrize("delay", [0.0, 0.02, 0.08, 0.2])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_start_up(guests, sig, delay):
    """Imports, set-up, loading: "Aborted!", a traceback or exit 1 before; now one line.
    The signal goes ``delay`` seconds after pyvmm installed its handlers (SIGHUP's, the last:
    Python itself catches SIGINT from the start; before that the
    interpreter itself is starting, and no program can catch it: waiting a fixed time from
    the spawn made this test fail on a loaded host)."""
    p = start("run", str(guests / "hostile.elf"), "--append", "partial", "--timeout", "20")
    deadline = time.monotonic() + 10
    while not _caught(p.pid, signal.SIGHUP) and time.monotonic() < deadline:  # pyvmm's last
        time.sleep(0.001)
    time.sleep(delay)
    p.send_signal(sig)
    _, err = p.communicate(timeout=10)
    assert p.returncode == 128 + sig, err
    assert b"Traceback" not in err and b"Aborted" not in err
    assert err in (b"", f"pyvmm: interrupted ({sig.name})\n".encode())


def _before_pyvmm_code(err: bytes) -> bool:
    """A KeyboardInterrupt traceback in which no line of pyvmm's code is: the signal came
    while CPython was still starting (it takes SIGINT before it imports ``site``) or while
    the console script's ``from pyvmm.entry import main`` was still looking for the
    package, before its first line ran.  No program's code can run earlier."""
    if err == b"KeyboardInterrupt\n":  # raised with no Python frame at all: CPython's start
        return True
    return b"Traceback" in err and re.search(rb'File "[^"]*/pyvmm/[^"]*\.py"', err) is None


@pytest.mark.kvm
def test_sigint_sweep_from_spawn(guests):
    """SIGINT at every millisecond from 0 to 100 after the spawn (issue #17: 16 of 65
    such points were a KeyboardInterrupt traceback through the console script's
    ``from pyvmm.entry import main``, and through pyvmm's own imports): from pyvmm's
    first line on, Ctrl-C is one line and status 130, never a traceback."""
    ours = 0
    for ms in range(0, 101):
        p = start("run", str(guests / "hostile.elf"), "--append", "partial", "--timeout", "5")
        time.sleep(ms / 1000)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        if _before_pyvmm_code(err):
            # CPython's own (README, "Exit statuses"); once in a few hundred it even prints
            # "Failed checking if argv[0] is an import path entry" and goes on: --timeout
            continue
        assert b"Traceback" not in err, (ms, err.decode()[-800:])
        assert p.returncode in (130, -signal.SIGINT), (ms, p.returncode, err)
        if p.returncode == 130:
            assert err in (b"", b"pyvmm: interrupted (SIGINT)\n"), (ms, err)
            ours += 1
    assert ours > 0  # the sweep reached pyvmm's own handling


# --- bad values ---------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--timeout", "nan"], "not a positive number"),
    (["--timeout", "-1"], "not a positive number"),
    (["--mem", "lots"], "not a size"),
    (["--mem", "1K"], "multiple of 4 KiB"),
    (["--mem", "0.1K"], "not a whole number of bytes"),
    (["--mem", "65536G"], "more than this host's"),
    (["--irqchip", "maybe"], "maybe"),
    (["--cpus", "65"], "65"),
])
def test_bad_option_values_are_usage_errors(guests, args, words):
    p = pyvmm("run", str(guests / "hello.elf"), *args)
    assert p.returncode == ExitStatus.USAGE, p.stderr
    assert words in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("args, words", [
    (["run", "--bogus"], "No such option '--bogus'"),
    (["run", "x.elf", "--mem"], "'--mem' requires an argument"),
    (["run", "x.elf", "--cpus", "0"], "'--cpus'"),
    (["run", "/"], "is a directory"),
    (["nosuch"], "No such command 'nosuch'"),
    (["guest", "build"], "Missing argument 'SOURCES...'"),
    (["guest", "flags", "--bogus"], "No such option"),
    (["suite", "--bogus"], "No such option"),
    (["doctor", "extra"], "unexpected extra argument"),
    (["info", "--x"], "No such option"),
])
def test_argument_errors_are_one_line(args, words):
    """click's own block was four lines (usage, hint, blank, error); the README promises
    one line and status 2, for every subcommand."""
    p = pyvmm(*args)
    assert p.returncode == ExitStatus.USAGE, p.stderr
    line = one_line(p)
    assert line.startswith("pyvmm: ") and words in line and "--help" in line


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["guest", "build", "-h"]])
def test_help_is_still_the_whole_usage(args):
    p = pyvmm(*args)
    assert p.returncode == 0 and p.stdout.startswith("Usage: pyvmm") and "Options:" in p.stdout


@pytest.mark.kvm
def test_fractional_mem_as_qemu(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--mem", "0.5G")
    assert p.returncode == 0, p.stderr
    assert "512 MiB RAM" in p.stdout


@pytest.mark.kvm
@pytest.mark.parametrize("args, words", [
    (["--irqchip", "none", "--cpus", "2"], "needs an irqchip"),
    (["--initrd", "/nonexistent/initrd"], "no such file"),
    (["--append", "x" * 5000], "command line too long"),
])
def test_bad_machine_settings_are_usage_errors(guests, args, words):
    p = pyvmm("run", str(guests / "hello.elf"), *args)
    assert p.returncode == ExitStatus.USAGE
    assert words in one_line(p)


@pytest.mark.kvm
def test_initrd_for_an_elf64_guest_is_a_usage_error(guests, tmp_path):
    f = tmp_path / "initrd"
    f.write_bytes(b"x")
    p = pyvmm("run", str(guests / "hello.elf"), "--initrd", str(f))
    assert p.returncode == ExitStatus.USAGE and "multiboot" in one_line(p)


@pytest.mark.kvm
def test_bare_mem_is_mib(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--mem", "128")
    assert p.returncode == 0 and "128 MiB RAM" in p.stdout


@pytest.mark.kvm
def test_verbose_describes_a_multiboot_kernel(guests):
    p = pyvmm("run", str(guests / "hello.flat"), "-v")
    assert p.returncode == 0, p.stderr
    assert "multiboot, entry protected mode" in p.stderr and "PC platform" in p.stderr


@pytest.mark.kvm
def test_verbose_shows_guest_events(guests):
    p = pyvmm("run", str(guests / "hostile.elf"), "--append", "sync 2", "-v")
    assert p.returncode == 0
    assert "vcpu0: GUEST_SYNC stage 1: 0x0" in p.stderr and "GUEST_SYNC stage 1: 0x1" in p.stderr


@pytest.mark.kvm
def test_non_utf8_kernel_path_boots(guests, tmp_path):
    name = tmp_path / os.fsdecode(b"k\xff.flat")
    name.write_bytes((guests / "mbtest.flat").read_bytes())
    p = subprocess.run([*COMMAND, "run", os.fsencode(name), "--append", "info"],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert b'argv0 "' + os.fsencode(name) + b' info"' in p.stdout


# --- files that are not guest images -------------------------------------------------
@pytest.mark.kvm
def test_initrd_from_dev_zero_is_refused_at_once(guests):
    p = pyvmm("run", str(guests / "mbtest.flat"), "--initrd", "/dev/zero", timeout=20)
    assert p.returncode == ExitStatus.USAGE and "not a regular file" in one_line(p)


def test_a_fifo_guest_does_not_block(tmp_path):
    fifo = tmp_path / "guest.fifo"
    os.mkfifo(fifo)
    p = pyvmm("run", str(fifo), timeout=20)
    assert p.returncode == ExitStatus.GUEST_IMAGE and "not a regular file" in one_line(p)


def test_stdin_pipe_guest_is_refused_clearly(guests):
    p = shell(f"cat {guests}/hello.elf | PYVMM run /dev/stdin; echo rc=$?")
    assert "rc=120" in p.stdout and "not a regular file" in p.stderr


def test_huge_guest_is_refused_before_reading(tmp_path):
    big = tmp_path / "big.elf"
    with open(big, "wb") as f:
        f.truncate(3 << 30)  # sparse: 3 GiB that cost nothing to make
    t0 = time.monotonic()
    p = pyvmm("run", str(big), timeout=20)
    assert p.returncode == ExitStatus.GUEST_IMAGE and "3.0 GiB" in one_line(p)
    assert time.monotonic() - t0 < 15  # it was not read


# --- doctor -----------------------------------------------------------------------
def test_doctor_without_kvm_access_caches_nothing(tmp_path):
    p = pyvmm("doctor", env={"PYVMM_KVM_DEVICE": "/nonexistent/kvm",
                             "XDG_CACHE_HOME": str(tmp_path)})
    assert p.returncode == ExitStatus.KVM_UNAVAILABLE
    assert "no /nonexistent/kvm" in one_line(p)
    assert not (tmp_path / "pyvmm").exists() or not list((tmp_path / "pyvmm").glob("doctor-*"))


def _with_junk(src, dst, n: int):
    """``src`` with ``n`` bytes that no loader reads appended (as debug information is)."""
    with open(dst, "wb") as f:
        f.write(src.read_bytes())
        block = b"\x55" * (1 << 20)
        for _ in range(n >> 20):
            f.write(block)
    return dst


@pytest.mark.kvm
def test_a_big_elf_guest_is_not_read_whole(guests, tmp_path):
    """A guest file that fits was read whole: 200 MiB of debug information cost 200 MiB."""
    def peak(path) -> int:
        p = subprocess.Popen([*COMMAND, "run", str(path), "--mem", "256M"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        assert p.stderr is not None
        err = p.stderr.read()
        p.stderr.close()
        assert p.returncode == 0, err
        return usage.ru_maxrss << 10

    big = _with_junk(guests / "hello.elf", tmp_path / "big.elf", 200 << 20)
    assert peak(big) < peak(guests / "hello.elf") + (64 << 20)


_LIMITED = """
import resource, sys
from pyvmm import entry
import pyvmm.cli, pyvmm.loader.sparse  # everything a run imports, before the limit
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) << 10 for line in f if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (vm + (96 << 20), vm + (96 << 20)))
entry.main(sys.argv[1:])
"""


@pytest.mark.parametrize("name", ["hello.elf", "hello.flat"])
def test_a_guest_file_beyond_the_memory_limit_is_one_line(guests, tmp_path, name):
    """Under ``ulimit -v`` a guest file that fits the guest's RAM but not the process's
    memory was status 125 with an empty message (a bare MemoryError)."""
    import sys

    big = _with_junk(guests / name, tmp_path / name, 200 << 20)
    p = subprocess.run([sys.executable, "-P", "-c", _LIMITED, "run", str(big), "--mem", "256M"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == ExitStatus.GUEST_IMAGE, p.stderr
    assert "not enough memory to read the 200.1 MiB guest image" in one_line(p)
