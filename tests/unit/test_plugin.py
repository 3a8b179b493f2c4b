"""The pytest plugin's pure logic: checking results, where skips are reported, KVM hints, options."""

import pytest

from pyvmm.devices.ucall import GuestEvent
from pyvmm.pytest_plugin import check
from pyvmm.vstate.result import RunResult, RunStatus


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


def test_failure_names_the_status_as_users_read_it():
    """Before: 'guest run ended with status <RunStatus.ASSERT: 'assert'>'."""
    r = RunResult(RunStatus.ASSERT, 1, b"", message="g.c:1: x")
    with pytest.raises(pytest.fail.Exception) as e:
        check(r)
    assert "ended with status 'assert', expected 'ok'" in str(e.value)
    assert "RunStatus" not in str(e.value)


NO_KVM = "/nonexistent/pyvmm-test-kvm"


@pytest.fixture
def no_kvm(monkeypatch):
    """KVM hidden as the code under test lets tests hide it."""
    monkeypatch.setenv("PYVMM_KVM_DEVICE", NO_KVM)
    monkeypatch.delenv("PYVMM_REQUIRE_KVM", raising=False)


def test_skips_for_want_of_kvm_are_reported_at_the_test(pytester, no_kvm):
    """`pytest -rs` named pytest_plugin.py's line for every such skip, not the test."""
    pytester.makepyfile(test_k="""
        import pytest

        @pytest.mark.kvm
        def test_marked():
            pass

        @pytest.mark.requires(caps=("USER_MEMORY",))
        def test_requires():
            pass

        def test_fixture(pyvmm_machine):
            pass
    """)
    r = pytester.runpytest("-rs", "-p", "no:cacheprovider")
    r.assert_outcomes(skipped=3)
    text = r.stdout.str()
    assert "pytest_plugin.py" not in text, text
    for line in (3, 7, 11):  # where each test (its decorators first) begins
        assert f"test_k.py:{line}: needs /dev/kvm: " in text, text
    # under plain pytest too, a run where nothing ran for want of KVM says what to do
    assert "set PYVMM_REQUIRE_KVM=1 to make that a failure" in text


def test_suite_entries_skip_at_their_line_in_the_config(pytester, no_kvm):
    pytester.makefile(".flat", k="\0")
    pytester.makefile(".cfg", unittests="# comment\n[old]\nfile = k.flat\narch = i386\n\n"
                                         "[runs]\nfile = k.flat\n")
    r = pytester.runpytest("-rs", "-p", "no:cacheprovider", "unittests.cfg")
    r.assert_outcomes(skipped=2)
    text = r.stdout.str()
    assert "unittests.cfg:2: i386 only" in text and "unittests.cfg:6: needs /dev/kvm: " in text, text
    assert "plugin.py" not in text


def test_kvm_hint_only_when_nothing_ran():
    from pyvmm.suite.model import Verdict
    from pyvmm.suite.reporter import Finished, kvm_hint

    kvm = Finished("a", Verdict.SKIP, "needs /dev/kvm: no /dev/kvm")
    other = Finished("b", Verdict.SKIP, "needs QEMU -device edu")
    assert kvm_hint([kvm, other]) == ("no test ran: 1 of 2 skipped because KVM is unusable "
                                      "(no /dev/kvm); set PYVMM_REQUIRE_KVM=1 to make that a failure")
    assert kvm_hint([kvm, Finished("c", Verdict.PASS)]) is None
    assert kvm_hint([other]) is None and kvm_hint([]) is None


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1", "1e308", "x"])
def test_timeout_scale_that_never_times_out_is_a_usage_error(pytester, value):
    r = pytester.runpytest("-p", "no:cacheprovider", "--pyvmm-timeout-scale", value)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pyvmm-timeout-scale" in r.stderr.str()


def test_output_dir_that_cannot_be_one_is_a_usage_error(pytester):
    pytester.makefile(".txt", afile="x")
    r = pytester.runpytest("-p", "no:cacheprovider", "--pyvmm-output", "afile.txt/sub")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    assert "--pyvmm-output afile.txt/sub: cannot create the directory: Not a directory" in r.stderr.str()
