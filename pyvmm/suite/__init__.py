"""Suites of test kernels: kvm-unit-tests' ``unittests.cfg`` and pyvmm's TOML manifests.

Each entry becomes a pytest item (:mod:`pyvmm.suite.plugin`), so pytest-xdist runs them in
parallel, ``--junitxml`` writes JUnit and users' conftest hooks apply; ``pyvmm suite`` is
the front over that (:mod:`pyvmm.suite.command`).  This module reads a config in either
format; :mod:`pyvmm.suite.execute` runs one entry.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from pathlib import Path

from pyvmm.suite.model import SuiteConfigError, SuiteTest

__all__ = ["SuiteConfigError", "is_manifest", "is_suite_file", "load", "select"]


def is_manifest(path: Path) -> bool:
    return path.suffix == ".toml"


def is_suite_file(path: Path) -> bool:
    """Files pytest collects as suites without being named: ``unittests.cfg``,
    ``pyvmm.toml`` and ``*.pyvmm.toml``."""
    return path.name in ("unittests.cfg", "pyvmm.toml") or path.name.endswith(".pyvmm.toml")


def load(path: Path, *, run_all: bool = False, groups_selected: bool = False) -> list[SuiteTest]:
    """The tests of ``path``, a manifest (``.toml``) or a ``unittests.cfg`` (anything else)."""
    from pyvmm.suite import kut, manifest

    try:
        if is_manifest(path):
            return manifest.parse(path)
        return kut.parse(path, run_all=run_all, groups_selected=groups_selected)
    except manifest.ManifestError as e:
        raise SuiteConfigError(str(e)) from None
    except OSError as e:
        raise SuiteConfigError(f"cannot read {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SuiteConfigError(f"{path} is not a text file") from None


def select(tests: Iterable[SuiteTest], patterns: Iterable[str] = (),
           groups: Iterable[str] = ()) -> list[SuiteTest]:
    """The tests named by ``patterns`` (names or shell globs; all when empty) that are in
    one of ``groups`` (all when empty), in config order."""
    pats, wanted = list(patterns), set(groups)
    return [t for t in tests
            if (not pats or any(fnmatch.fnmatchcase(t.name, p) for p in pats))
            and (not wanted or wanted & set(t.groups))]
