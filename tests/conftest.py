"""Shared test set-up: guest images (built by the Makefile).

The KVM-or-skip rule (PYVMM_REQUIRE_KVM=1 turns the skip into a failure) lives in pyvmm's
own pytest plugin, which these tests use like any user's would.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "guests" / "build"


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built guests; builds them with make if they are missing."""
    if not (GUEST_DIR / "protocol.elf").exists():
        subprocess.run(["make", "-C", str(ROOT), "guests"], check=True, capture_output=True)
    return GUEST_DIR
