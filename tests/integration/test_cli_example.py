"""The example project (``examples/hello-project``) where /dev/kvm cannot be used, as for
a user who is not in the kvm group: its tests skip, naming why, and so does its embedding
tool (issue #17: ``make test`` skipped the suite as documented, then died in a traceback
from ``embed.py``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hello-project"


def make_test(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.skip("the example project builds its guest with make and gcc")
    project = tmp_path / "hello-project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("build", "__pycache__"))
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(["make", "--no-print-directory", "-C", str(project), "test"],
                           capture_output=True, text=True, timeout=300,
                           env=dict(os.environ, PATH=path, **env))


def test_example_without_kvm_skips_with_the_reason(tmp_path):
    p = make_test(tmp_path, PYVMM_KVM_DEVICE="/nonexistent/kvm", PYVMM_REQUIRE_KVM="0")
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "Traceback" not in p.stdout + p.stderr
    assert "skipped" in p.stdout and "embed.py: skipped: needs /dev/kvm: open /nonexistent/kvm" \
        in p.stdout


def test_example_without_kvm_fails_when_kvm_is_required(tmp_path):
    p = make_test(tmp_path, PYVMM_KVM_DEVICE="/nonexistent/kvm", PYVMM_REQUIRE_KVM="1")
    assert p.returncode != 0 and "Traceback" not in p.stdout + p.stderr
    assert "PYVMM_REQUIRE_KVM=1 but KVM is unusable" in p.stdout + p.stderr
