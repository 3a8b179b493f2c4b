"""The ``pyvmm`` process ends without the interpreter's finalization (pyvmm.entry._exit_now),
but only where that changes nothing a user sees: buffered output is flushed, a thread Python
would wait for is waited for, ``atexit`` handlers run, and the status is the same."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

#: the console script's own lines, after ``prelude``: sys.argv as the shell gives it
_SCRIPT = """
import os, sys
{prelude}
from pyvmm.entry import main
sys.argv = ["pyvmm", *{args!r}]
main()
"""


def _pyvmm_with(prelude: str, *args: str) -> subprocess.CompletedProcess[str]:
    code = _SCRIPT.format(prelude=prelude, args=list(args))
    return subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                          timeout=60)


#: an object whose finalizer says when the interpreter tears the modules down
_FINALIZED = """
class _Noisy:
    def __del__(self):
        os.write(2, b"finalized")
sys.modules["_pyvmm_noisy"] = _Noisy()
"""


@pytest.mark.kvm
def test_a_run_skips_finalization(guests: Path) -> None:
    p = _pyvmm_with(_FINALIZED, "run", str(guests / "hello.elf"))
    assert p.returncode == 0, p.stderr
    assert "Hello from a pyvmm guest" in p.stdout
    assert "finalized" not in p.stderr


def test_an_error_status_skips_finalization_too(tmp_path: Path) -> None:
    p = _pyvmm_with(_FINALIZED, "run", str(tmp_path / "missing.elf"))
    assert p.returncode == 120, p.stderr  # GuestImageError
    assert "finalized" not in p.stderr


def test_buffered_output_is_flushed() -> None:
    """click writes --version through sys.stdout, block-buffered into a pipe."""
    p = _pyvmm_with("sys.stdout.write('before ')", "--version")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("before ") and "version" in p.stdout


def test_a_non_daemon_thread_is_waited_for() -> None:
    prelude = ("import threading, time\n"
               "threading.Thread(target=lambda: (time.sleep(0.3), os.write(1, b'thread done'))"
               ").start()")
    p = _pyvmm_with(prelude, "--version")
    assert p.returncode == 0, p.stderr
    assert "thread done" in p.stdout


def test_atexit_handlers_run() -> None:
    prelude = "import atexit; atexit.register(lambda: os.write(2, b'atexit ran'))"
    p = _pyvmm_with(prelude, "run", "/nonexistent/guest.elf")
    assert p.returncode == 120, p.stderr  # GuestImageError
    assert "atexit ran" in p.stderr


@pytest.mark.parametrize("status, want", [(0xFFFFFFFF, 255), (1 << 40 | 7, 7), (-1, 255)])
def test_a_status_beyond_a_c_int_exits_as_sys_exit_would(status: int, want: int) -> None:
    """os._exit takes a C int: a command returning a guest's raw 32-bit value (fuzz-target
    run by hand on a guest whose main returned -1) ended in an OverflowError traceback and
    status 1; the kernel keeps the low 8 bits of what sys.exit would have passed it."""
    p = _pyvmm_with(f"import pyvmm.entry as e; e._run = lambda *a: {status}", "info")
    assert p.returncode == want, p.stderr
    assert "Traceback" not in p.stderr, p.stderr
