"""Shared test set-up: guest images (built by the Makefile through `pyvmm guest build`).

The KVM-or-skip rule (PYVMM_REQUIRE_KVM=1 turns the skip into a failure) lives in pyvmm's
own pytest plugin, which these tests use like any user's would.  Under
``PYVMM_TEST_INSTALLED=1`` (``make test``, CI) the suite refuses to run against the source
tree: what is tested must be the installed wheel, as users get it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

import pyvmm

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "guests" / "build"


def pytest_configure(config: pytest.Config) -> None:
    where = Path(pyvmm.__file__).resolve()
    if os.environ.get("PYVMM_TEST_INSTALLED") == "1" and where.is_relative_to(ROOT / "pyvmm"):
        raise pytest.UsageError(f"PYVMM_TEST_INSTALLED=1 but pyvmm was imported from the source "
                                f"tree ({where}), not from the installed wheel")


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built guests; builds them with make if they are missing."""
    if not (GUEST_DIR / "protocol.elf").exists():
        subprocess.run(["make", "-C", str(ROOT), "guests"], check=True, capture_output=True)
    return GUEST_DIR
