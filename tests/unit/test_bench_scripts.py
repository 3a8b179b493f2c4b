"""The bench scripts measure the installed package, whatever the working directory
(`make bench` runs them from the repository root, where ``pyvmm/`` is the source tree with
no ``_native``): they import bench/installed.py first, and every child Python they start
gets ``-P`` (its working directory off ``sys.path``)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

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
