from __future__ import annotations

import pytest

from tests.conftest import require_kvm


@pytest.fixture(autouse=True)
def _kvm() -> None:
    require_kvm()
