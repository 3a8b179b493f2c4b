"""Shared test set-up: guest images (built by the Makefile) and the KVM-or-skip rule.

Integration tests need a usable /dev/kvm.  Without one they skip with the reason, unless
PYVMM_REQUIRE_KVM=1 (CI sets it whenever /dev/kvm exists): then the missing KVM is a
failure, so a broken KVM path can never hide behind a skip.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GUEST_DIR = ROOT / "guests" / "build"


def kvm_unavailable_reason() -> str | None:
    from pyvmm.kvm import Kvm, KvmError

    try:
        Kvm().close()
    except KvmError as e:
        return str(e)
    return None


def require_kvm() -> None:
    reason = kvm_unavailable_reason()
    if reason is None:
        return
    if os.environ.get("PYVMM_REQUIRE_KVM") == "1":
        pytest.fail(f"PYVMM_REQUIRE_KVM=1 but KVM is unusable: {reason}", pytrace=False)
    pytest.skip(f"needs /dev/kvm: {reason}")


@pytest.fixture(scope="session")
def guests() -> Path:
    """The directory of built guests; builds them with make if they are missing."""
    if not (GUEST_DIR / "selftest.elf").exists():
        subprocess.run(["make", "-C", str(ROOT), "guests"], check=True, capture_output=True)
    return GUEST_DIR
