"""The pytest plugin's pure logic: checking results."""

import pytest

from pyvmm.devices.ucall import GuestEvent
from pyvmm.pytest_plugin import check
from pyvmm.vstate.result import RunResult


def test_check_passes_ok_and_expected_statuses():
    assert check(RunResult("done", 0, b"")).status == "done"
    assert check(RunResult("exit", 0, b"")).ok
    assert check(RunResult("crash", None, b""), expect="crash").status == "crash"


def test_check_fails_with_the_guests_words():
    ev = GuestEvent("assert", 0, (3, 4), file="g.c", line=12, expr="a == b")
    r = RunResult("assert", 1, b"some output\n", message=ev.describe(), assertion=ev)
    with pytest.raises(pytest.fail.Exception) as e:
        check(r)
    text = str(e.value)
    assert "g.c:12: a == b (0x3 != 0x4)" in text and "some output" in text
