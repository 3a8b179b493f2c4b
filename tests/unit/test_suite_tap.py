"""The TAP stream `pyvmm suite --tap` writes, read back by TAP consumers: tap.py's parser
(PyPI) and Perl's TAP::Harness (`prove`, in every Debian perl)."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest
from tap.parser import Parser

from pyvmm.suite.model import Verdict
from pyvmm.suite.tap import TapWriter


def sample() -> str:
    buf = io.StringIO()
    w = TapWriter(buf)
    w.add("apic", Verdict.PASS, lines=["PASS: x2apic # one", "SKIP: tsc deadline", "XFAIL: known"])
    w.add("pmu", Verdict.FAIL, "FAIL: counter 0", ["PASS: a", "FAIL: counter 0"], duration=0.25)
    w.add("iommu", Verdict.SKIP, "needs QEMU -device intel-iommu")
    w.add("hang", Verdict.FAIL, "timeout; duration=90s\nsecond line")
    w.close()
    return buf.getvalue()


def test_points_plan_and_directives_as_tap_py_reads_them():
    lines = list(Parser().parse_text(sample()))
    assert lines[0].category == "version" and lines[0].version == 13
    results = [x for x in lines if x.category == "test"]
    assert [(r.number, r.ok, r.skip) for r in results] == [
        (1, True, False), (2, False, False), (3, True, True), (4, False, False)]
    assert results[2].directive.reason == "needs QEMU -device intel-iommu"
    assert results[0].description == "- apic"
    plan = [x for x in lines if x.category == "plan"]
    assert plan[0].expected_tests == 4


def test_subtests_are_indented_points_with_their_own_plan():
    text = sample()
    assert "    # Subtest: apic\n    ok 1 - x2apic \\# one\n    ok 2 - tsc deadline # SKIP\n" \
           "    not ok 3 - known # TODO expected failure\n    1..3\nok 1 - apic\n" in text
    assert "    not ok 2 - counter 0\n" in text
    assert '  message: "FAIL: counter 0"\n' in text and "  duration_ms: 250.0\n" in text


def test_a_reason_never_breaks_a_line():
    assert '  message: "timeout; duration=90s\\nsecond line"\n' in sample()


@pytest.mark.skipif(shutil.which("prove") is None, reason="prove (Perl's TAP::Harness) not installed")
def test_prove_counts_the_failures(tmp_path):
    f = tmp_path / "suite.tap"
    f.write_text(sample())
    p = subprocess.run(["prove", "-e", "cat", str(f)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "Tests: 4 Failed: 2" in p.stdout and "Failed tests:  2, 4" in p.stdout
