"""The bench scripts measure the installed package, whatever the working directory
(`make bench` runs them from the repository root, where ``pyvmm/`` is the source tree with
no ``_native``): they import bench/installed.py first, and every child Python they start
gets ``-P`` (its working directory off ``sys.path``)."""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if p.name != "installed.py")


def test_there_are_bench_scripts() -> None:
    assert {p.name for p in SCRIPTS} >= {"run.py", "suite.py", "debug.py", "snapshot.py"}


def _imported(node: ast.stmt) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module]
    return []


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_bench_script_imports_installed_before_pyvmm(script: Path) -> None:
    modules = [m for node in ast.parse(script.read_text()).body for m in _imported(node)]
    first_pyvmm = next(i for i, m in enumerate(modules) if m.split(".")[0] == "pyvmm")
    assert "installed" in modules[:first_pyvmm], modules


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_a_child_python_never_imports_from_the_working_directory(script: Path) -> None:
    """``python -c``/``-m`` put the working directory first on sys.path: the bug that
    ended `make bench` with a traceback at its last row (issue 22)."""
    for node in ast.walk(ast.parse(script.read_text())):
        if isinstance(node, ast.List) and node.elts and ast.unparse(node.elts[0]) == "sys.executable":
            flags = [e.value for e in node.elts[1:] if isinstance(e, ast.Constant)]
            assert "-P" in flags, f"{script.name}:{node.lineno}: {ast.unparse(node)} without -P"


def test_the_source_tree_is_refused_in_one_line() -> None:
    code = f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(BENCH)!r}]; import installed"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    p = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                       env=env, timeout=60)
    assert p.returncode == 1
    assert p.stderr.count("\n") == 1 and "source tree" in p.stderr, p.stderr


def test_the_installed_package_is_taken() -> None:
    code = f"import sys; sys.path.insert(0, {str(BENCH)!r}); import installed; print(installed.PYVMM)"
    p = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stderr


@pytest.fixture
def suite_bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location("bench_suite_under_test", BENCH / "suite.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_failing_suite_names_its_kernel(suite_bench: Any) -> None:
    """`pyvmm suite` failing in a timed round: the kernel from its FAIL line is left out
    (it was a one-line exit of the whole bench, naming nothing)."""
    cmd = [sys.executable, "-c", "print('PASS a (1 tests)'); print('FAIL rtc-uip: exit status 3');"
           "raise SystemExit(1)"]
    with pytest.raises(suite_bench.KernelFailed) as info:
        suite_bench.timed(cmd)
    assert (info.value.name, info.value.who) == ("rtc-uip", "pyvmm")
    assert "exit status 3" in info.value.why


def test_a_hung_kernel_is_left_out_not_waited_for(suite_bench: Any,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """QEMU's pc hung on the s3 kernel in a timed round: the bench died with a
    TimeoutExpired traceback after 300 s."""
    monkeypatch.setattr(suite_bench, "TIMEOUT", 0.5)
    with pytest.raises(suite_bench.KernelFailed) as info:
        suite_bench.timed(["sleep", "30"], (1,), "s3", "QEMU")
    assert (info.value.name, info.value.who) == ("s3", "QEMU")
    assert "timed out" in info.value.why
    assert suite_bench.timed([sys.executable, "-c", "raise SystemExit(1)"], (1,), "ok") > 0
