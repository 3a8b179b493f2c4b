"""``pyvmm run``'s artefacts (``--core``, ``--trace``, ``--save-at-sync``): a path that
cannot be written is a usage error before the guest starts, and a write that fails after
the run never hides the guest's own outcome (issue #17: both were status 125 "internal
error", and the guest's assertion, timeout or crash line was lost)."""

from __future__ import annotations

import os
import resource
import signal

import pytest
from cli import pyvmm

from pyvmm.errors import ExitStatus


def lines(stderr: str) -> list[str]:
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.strip()]


def _option(option: str, path: str) -> list[str]:
    return ["--save-at-sync", "1", path] if option == "--save-at-sync" else [option, path]


@pytest.mark.parametrize("option", ["--core", "--trace", "--save-at-sync"])
@pytest.mark.parametrize("where, words", [
    ("missing/dir/out", "does not exist"),
    ("adir", "is a directory"),
    ("afile/out", "Not a directory"),
])
def test_bad_output_path_is_a_usage_error_before_the_guest_runs(guests, tmp_path, option,
                                                                 where, words):
    (tmp_path / "adir").mkdir()
    (tmp_path / "afile").write_text("")
    p = pyvmm("run", str(guests / "hello.elf"), *_option(option, str(tmp_path / where)))
    assert p.returncode == ExitStatus.USAGE, p.stderr
    (line,) = lines(p.stderr)
    assert line.startswith("pyvmm: ") and option in line and words in line
    assert p.stdout == ""  # the guest never ran


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
@pytest.mark.parametrize("option", ["--core", "--trace", "--save-at-sync"])
def test_unwritable_directory_is_a_usage_error(guests, tmp_path, option):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    p = pyvmm("run", str(guests / "hello.elf"), *_option(option, str(ro / "out")))
    assert p.returncode == ExitStatus.USAGE
    assert "permission denied" in lines(p.stderr)[0] and p.stdout == ""


def test_save_at_sync_onto_a_device_is_refused(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--save-at-sync", "1", "/dev/null")
    assert p.returncode == ExitStatus.USAGE
    assert "not a regular file" in lines(p.stderr)[0]


@pytest.mark.kvm
def test_failed_trace_write_keeps_the_assertion(guests):
    p = pyvmm("run", str(guests / "protocol.elf"), "--append", "assert", "--trace", "/dev/full")
    assert p.returncode == ExitStatus.GUEST_ASSERT, p.stderr
    got = lines(p.stderr)
    assert "GUEST_ASSERT" in got[0] or "assert" in got[0].lower(), got
    assert got[-1] == "pyvmm: cannot write the trace to /dev/full: No space left on device"


@pytest.mark.kvm
def test_failed_core_write_keeps_the_timeout(guests):
    p = pyvmm("run", str(guests / "selftest.elf"), "--append", "spin", "--timeout", "0.5",
              "--core", "/dev/full")
    assert p.returncode == ExitStatus.TIMEOUT, p.stderr
    got = lines(p.stderr)
    assert len(got) == 2 and "did not stop within 0.5 s" in got[0], got
    assert got[1].startswith("pyvmm: cannot write the core to /dev/full: ")


@pytest.mark.kvm
def test_failed_trace_after_a_clean_exit_is_119(guests):
    p = pyvmm("run", str(guests / "hello.elf"), "--trace", "/dev/full")
    assert p.returncode == ExitStatus.OUTPUT
    assert p.stdout.startswith("Hello from a pyvmm guest")
    assert lines(p.stderr) == ["pyvmm: cannot write the trace to /dev/full: No space left on device"]


def _small_files() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of death by signal
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))


@pytest.mark.kvm
def test_a_file_size_limit_does_not_stop_a_guest(guests):
    """Regression: guest RAM in a memfd is a file, so under ``ulimit -f`` smaller than the
    guest's RAM every run failed with 121 (ftruncate: EFBIG).  RAM then falls back to
    anonymous shared memory."""
    p = pyvmm("run", str(guests / "hello.elf"), preexec_fn=_small_files)
    assert p.returncode == 0, p.stderr
    assert "Hello from a pyvmm guest" in p.stdout


@pytest.mark.kvm
def test_failed_snapshot_save_runs_the_guest_on(guests, tmp_path):
    """The snapshot (64 MiB of RAM) cannot be written under a 1 MiB file-size limit: the
    guest runs on to its end all the same, and the failure is said after it."""
    path = tmp_path / "s.snap"
    p = pyvmm("run", "-v", "--save-at-sync", "1", str(path), str(guests / "snapshot.elf"),
              preexec_fn=_small_files)
    assert p.returncode == ExitStatus.OUTPUT, p.stderr
    got = lines(p.stderr)
    assert any("stage 3" in line for line in got)  # it ran past the stage it was saved at
    assert got[-1].startswith(f"pyvmm: cannot write the snapshot to {path}: "), got
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))
