"""Suite configs read as their runners read them: kvm-unit-tests' unittests.cfg (entries,
skip rules, QEMU options mapped or refused by name), pyvmm's TOML manifest, and the
verdict rules of each.  Pure logic; the runs themselves are in integration/test_suite.py."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from pyvmm.crash import GuestCrash
from pyvmm.suite import SuiteConfigError, is_suite_file, kut, load, manifest, qemu_args, select
from pyvmm.suite.execute import kut_verdict, manifest_verdict
from pyvmm.suite.model import MANIFEST, SuiteTest, Verdict, report_lines
from pyvmm.vstate.result import RunResult, RunStatus

DATA = Path(__file__).parent / "data"


@pytest.fixture
def cfg(tmp_path: Path) -> dict[str, SuiteTest]:
    shutil.copy(DATA / "kut-sample.cfg", tmp_path / "unittests.cfg")
    (tmp_path / "plain.flat").write_bytes(b"\0")
    return {t.name: t for t in load(tmp_path / "unittests.cfg")}


def test_every_section_in_file_order_and_comments_skipped(cfg):
    assert list(cfg)[:3] == ["plain", "two-cpus", "indented"]
    assert "commented" not in cfg and len(cfg) == 20


def test_values_as_bash_expands_them(cfg, monkeypatch):
    assert cfg["two-cpus"].cpus == 2 and cfg["two-cpus"].timeout == 30
    assert cfg["two-cpus"].groups == ("apic", "smp")
    assert cfg["indented"].append == "one two"  # read -r drops the leading blanks
    assert cfg["arith"].cpus == 3 and cfg["arith"].append == "10000 42"  # $((..)) and `..`
    assert cfg["max-smp"].mem == "256" and cfg["max-smp"].append == "a b"


def test_max_smp_is_the_number_of_cpus(cfg):
    import os

    assert cfg["max-smp"].cpus == os.cpu_count()


def test_triple_quoted_block_spans_lines(cfg):
    t = cfg["block"]
    assert t.mem == "2048" and t.pit is False and t.append == "-skip_this"
    assert t.skip_reason() is None and t.notes == ["-cpu host-phys-bits=on: as pyvmm always does"]


def test_cpu_flags_become_cpu_features(cfg):
    assert cfg["two-cpus"].cpu_features == ["+x2apic", "+kvm-pv-ipi"]
    assert "only the +/- flags are applied" in cfg["two-cpus"].notes[0]


@pytest.mark.parametrize("name, reason", [
    ("iommu", "needs QEMU -machine q35; needs QEMU -device intel-iommu; needs QEMU -device edu"),
    ("hyperv", "needs QEMU -cpu property hv_passthrough=on; needs QEMU -device hyperv-testdev"),
    ("overcommit", "needs QEMU option -overcommit"),
    ("i386", "i386 only"),
    ("tcg", "needs accel tcg; pyvmm runs on KVM"),
    ("manual", "test marked as manual run only (group nodefault)"),
    ("check-fails", "/nonexistent/parameter not equal to Y"),
    ("disabled", 'disabled because: [ "$TARGET" = qemu ]'),
])
def test_skips_name_their_reason(cfg, name, reason):
    assert cfg[name].skip_reason() == reason


def test_runnable_entries(cfg):
    for name in ("plain", "kvm-accel", "not-disabled", "hotplug", "irqchip-split"):
        assert cfg[name].skip_reason() is None, name
    assert cfg["irqchip-split"].irqchip == "split"
    assert cfg["hotplug"].notes == ["-smp maxcpus=64 ignored (no CPU hotplug; 1 vCPUs)"]


def test_unsupported_runs_when_asked_but_host_skips_stay(cfg):
    assert cfg["iommu"].skip_reason(run_unsupported=True) is None
    assert cfg["i386"].skip_reason(run_unsupported=True) == "i386 only"


def test_missing_kernel_and_bad_entry(cfg):
    assert "nothere.flat not found" in (cfg["missing-kernel"].skip_reason() or "")
    assert cfg["bad-timeout"].error == "cannot read its entry in unittests.cfg: not a timeout: 'soon'"


def test_nodefault_runs_with_a_group_or_all(tmp_path):
    shutil.copy(DATA / "kut-sample.cfg", tmp_path / "unittests.cfg")
    (tmp_path / "plain.flat").write_bytes(b"\0")
    for kw in ({"run_all": True}, {"groups_selected": True}):
        tests = {t.name: t for t in load(tmp_path / "unittests.cfg", **kw)}
        assert tests["manual"].skip_reason() is None


def test_select_by_glob_and_group(cfg):
    tests = list(cfg.values())
    assert [t.name for t in select(tests, ["i*"])] == ["indented", "iommu", "i386",
                                                      "irqchip-split"]
    assert [t.name for t in select(tests, groups=["smp"])] == ["two-cpus"]
    assert [t.name for t in select(tests, ["plain", "arith"])] == ["plain", "arith"]


@pytest.mark.parametrize("argv, want", [
    (["-smp", "4"], {"cpus": 4}),
    (["-smp", "cpus=3,sockets=1"], {"cpus": 3}),
    (["-m", "1G"], {"mem": "1G"}),
    (["-m", "size=512M"], {"mem": "512M"}),
    (["-append", "a b", "-initrd", "env"], {"append": "a b", "initrd": "env"}),
    (["-cpu", "host,-x2apic,tsc-deadline=on,pcid=off"],
     {"cpu_features": ["-x2apic", "+tsc-deadline", "-pcid"]}),
    (["-machine", "pit=off"], {"pit": False}),
    (["-M", "pc,kernel-irqchip=off"], {"irqchip": "none"}),
    (["--no-reboot", "-nodefaults", "-enable-kvm"], {}),
    (["-device", "isa-debug-exit,iobase=0xf4,iosize=0x4", "-device", "pc-testdev"], {}),
])
def test_qemu_options_mapped(argv, want):
    s = qemu_args.parse(argv)
    assert s.unsupported == []
    for key, value in want.items():
        assert getattr(s, key) == value


@pytest.mark.parametrize("argv, reason", [
    (["-device", "edu"], "needs QEMU -device edu"),
    (["-machine", "q35"], "needs QEMU -machine q35"),
    (["-machine", "pc,smm=on"], "needs QEMU -machine smm=on"),
    (["-accel", "tcg"], "needs QEMU -accel tcg (pyvmm runs on KVM)"),
    (["-smp", "2,sockets=2"], "needs QEMU -smp sockets=2 (pyvmm gives one socket)"),
    (["-smp", "500"], "needs QEMU -smp 500 (pyvmm runs 1-64 vCPUs)"),
    (["-cpu", "max,phys-bits=36"], "needs QEMU -cpu property phys-bits=36"),
    (["-global", "x=y"], "needs QEMU option -global"),
    (["-append"], "-append without its argument"),
])
def test_qemu_options_refused_by_name(argv, reason):
    assert qemu_args.parse(argv).unsupported == [reason]


def test_cpu_vendor_is_refused_only_when_it_is_not_the_hosts():
    from pyvmm.x86.cpuid import host_vendor

    assert qemu_args.parse(["-cpu", f"max,vendor={host_vendor()}"]).unsupported == []
    assert qemu_args.parse(["-cpu", "max,vendor=NotAVendor12"]).unsupported == [
        f"needs QEMU -cpu vendor=NotAVendor12 (this host is {host_vendor()})"]


def test_environ_file_as_the_scripts_write_it(tmp_path):
    t = SuiteTest("a/b", tmp_path / "x.flat", tmp_path / "unittests.cfg")
    text = kut.environ_file(t, tmp_path).read_text()
    assert "QEMU_ACCEL=kvm\n" in text and "KERNEL_VERSION=" in text
    assert all("=" in line for line in text.splitlines())


def test_timeouts_as_timeout1_reads_them():
    assert [kut.parse_timeout(x) for x in ("90", "90s", "5m", "1h", "0.5")] == [90, 90, 300, 3600, 0.5]
    with pytest.raises(ValueError):
        kut.parse_timeout("soon")


# --- verdicts -------------------------------------------------------------------------

def result(status: RunStatus, code: int | None = None, text: str = "", **kw) -> RunResult:
    return RunResult(status, code, text.encode(), **kw)


@pytest.mark.parametrize("r, verdict, status", [
    (result(RunStatus.EXIT, 0), Verdict.PASS, 0),  # QEMU status 1: PASS
    (result(RunStatus.EXIT, 38), Verdict.SKIP, 77),  # (38 << 1) | 1 = 77
    (result(RunStatus.EXIT, 1), Verdict.FAIL, 3),
    (result(RunStatus.EXIT, 0x80), Verdict.PASS, 0),  # QEMU's status has 8 bits: 0x101 -> 1
    (result(RunStatus.SHUTDOWN, None, message="ACPI S5"), Verdict.FAIL, 1),  # QEMU exits 0
    (result(RunStatus.TIMEOUT), Verdict.FAIL, 124),
])
def test_kvm_unit_tests_status_rules(r, verdict, status):
    v, _, st = kut_verdict(r, 90)
    assert (v, st) == (verdict, status)


def test_kut_reasons():
    assert kut_verdict(result(RunStatus.TIMEOUT), 2.5)[1] == "timeout; duration=2.5s"
    crash = GuestCrash(reason="triple fault", vcpu=0, regs={"rip": 0x1234}, symbol="main+0x4")
    assert kut_verdict(result(RunStatus.CRASH, crash=crash), 90)[1] == \
        "crash: triple fault at RIP 0x1234 <main+0x4>"


def test_manifest_rules(tmp_path):
    t = SuiteTest("x", tmp_path / "k", tmp_path / "m.toml", style=MANIFEST, expect_status=3,
                  expect_output="^done$")
    assert manifest_verdict(t, result(RunStatus.EXIT, 3, "a\ndone\n"))[0] == Verdict.PASS
    assert manifest_verdict(t, result(RunStatus.EXIT, 3, "not done"))[1] == \
        "output does not match '^done$'"
    assert manifest_verdict(t, result(RunStatus.EXIT, 0, "done"))[1] == \
        "exit status 0, expected 3 (debug-exit value 0)"
    assert manifest_verdict(t, result(RunStatus.TIMEOUT, message="too slow"))[2] == 124


def test_report_lines_and_summary_from_the_last_lines():
    lines, summary = report_lines("hello\nPASS: a\r\nFAIL: b\nSKIP: c\nSUMMARY: 3 tests, 1 "
                                  "unexpected failures, 1 skipped\n")
    assert lines == ["PASS: a", "FAIL: b", "SKIP: c"]
    assert summary == "3 tests, 1 unexpected failures, 1 skipped"
    assert report_lines("SUMMARY: 1 tests\n" + "x\n" * 5)[1] == ""  # as `tail -3 | grep`


# --- manifests -----------------------------------------------------------------------

def test_manifest_defaults_and_fields(tmp_path):
    (tmp_path / "k.elf").write_bytes(b"\0")
    m = tmp_path / "pyvmm.toml"
    m.write_text('[defaults]\ntimeout = 5\ngroups = ["all"]\n'
                 '[tests.a]\nkernel = "k.elf"\ncpus = 2\nmem = "1G"\nappend = "x y"\n'
                 'expect_status = 7\nexpect_output = "^ok"\npit = false\n'
                 'cpu_features = "+x2apic,-pcid"\n'
                 '[tests.b]\nkernel = "missing.elf"\ntimeout = 1\n')
    a, b = load(m)
    assert (a.cpus, a.mem, a.append, a.timeout, a.groups, a.expect_status, a.pit) == \
        (2, "1G", "x y", 5, ("all",), 7, False)
    assert a.cpu_features == ["+x2apic", "-pcid"] and a.kernel == tmp_path / "k.elf"
    assert b.timeout == 1 and "missing.elf not found" in (b.skip_reason() or "")


@pytest.mark.parametrize("text, message", [
    ("[tests.a]\nkernal = 'x'\n", "tests.a: unknown keys kernal"),
    ("[tests.a]\ncpus = 2\n", "tests.a has no kernel"),
    ("[tests.a]\nkernel = 'k'\nexpect_output = '('\n", "tests.a: missing ), unterminated subpattern"),
    ("[tests.a]\nkernel = 'k'\ncpus = 'many'\n", "tests.a: cpus must be a whole number from 1 to 1024, "
     "not 'many'"),
    # values from the file are checked for type and range, never used as whatever they are
    ("[tests.a]\nkernel = 'k'\nmem = 64\n", 'tests.a: mem must be a size with its unit, such as "64M" '
     '(did you mean "64M"?), not 64'),
    ("[tests.a]\nkernel = 'k'\nmem = '64Q'\n", "tests.a: not a size: '64Q'"),
    ("[tests.a]\nkernel = 'k'\ntimeout = nan\n", "tests.a: timeout nan is not a number of seconds"),
    ("[tests.a]\nkernel = 'k'\ntimeout = inf\n", "tests.a: timeout inf is not"),
    ("[tests.a]\nkernel = 'k'\ntimeout = 1e308\n", "tests.a: timeout 1e+308 is not"),
    ("[tests.a]\nkernel = 'k'\ntimeout = 0\n", "tests.a: timeout 0 is not"),
    ("[tests.a]\nkernel = 'k'\ntimeout = 99999999999999999999\n", "tests.a: timeout inf is not"),
    ("[tests.a]\nkernel = 'k'\ntimeout = true\n", "tests.a: timeout must be a number of seconds, not True"),
    ("[tests.a]\nkernel = 'k'\ncpus = 2.5\n", "tests.a: cpus must be a whole number"),
    ("[tests.a]\nkernel = 'k'\ncpus = true\n", "tests.a: cpus must be a whole number"),
    ("[tests.a]\nkernel = 'k'\nexpect_status = 256\n", "tests.a: expect_status must be a whole "
     "number from 0 to 255"),
    ("[tests.a]\nkernel = 'k'\ngroups = 'smoke'\n", "tests.a: groups must be a list of strings"),
    ("[tests.a]\nkernel = 'k'\ngroups = [[1]]\n", "tests.a: groups must be a list of strings, not list"),
    ("[tests.a]\nkernel = 'k'\nirqchip = 'apic'\n", "tests.a: irqchip must be one of kernel, split, none"),
    ("[tests.a]\nkernel = 'k'\npit = 'off'\n", "tests.a: pit must be true or false"),
    ("[tests.a]\nkernel = 2024-01-01\n", "tests.a: kernel must be a string, not date"),
    ("[tests.a]\nkernel = 'k'\nappend = 1\n", "tests.a: append must be a string"),
    ("[tests.a]\nkernel = 'k'\nexpect_output = 1\n", "tests.a: expect_output must be a string"),
    ("[tests.a]\nkernel = ''\n", "tests.a: kernel is empty"),
    ("[tests.a]\nkernel = 'k'\ngroups = " + "[" * 100_000 + "]" * 100_000 + "\n",
     "arrays or tables nested too deeply"),
    ("tests = 3\n", "no [tests.NAME] tables"),
    ("[tests\n", "pyvmm.toml: "),
])
def test_manifest_errors_name_file_and_test(tmp_path, text, message):
    m = tmp_path / "pyvmm.toml"
    m.write_text(text)
    with pytest.raises(SuiteConfigError, match=re.escape(message)):
        load(m)


def test_unreadable_config_is_a_config_error(tmp_path):
    with pytest.raises(SuiteConfigError, match="cannot read"):
        load(tmp_path / "nothere.cfg")
    (tmp_path / "bin.cfg").write_bytes(b"\xff\xfe[x]\n")
    with pytest.raises(SuiteConfigError, match="not a text file"):
        load(tmp_path / "bin.cfg")


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
@pytest.mark.parametrize("name", ["pyvmm.toml", "unittests.cfg"])
def test_a_config_that_is_no_file_is_refused_at_once(tmp_path, kind, name):
    """Before, a symlink to /dev/zero was read until memory ran out and a FIFO blocked for
    ever; a config is read as a guest file is: regular files only, bounded."""
    import os

    from pyvmm.suite.files import MAX_CONFIG

    path = tmp_path / name
    if kind == "dev-zero":
        path.symlink_to("/dev/zero")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        path.write_bytes(b"# " + b"x" * MAX_CONFIG)
    why = "more than the 4 MiB pyvmm reads" if kind == "huge" else "not a regular file"
    with pytest.raises(SuiteConfigError, match=f"{name}: .*{why}"):
        load(path)


def test_check_files_are_read_bounded_and_regular_only(tmp_path):
    """``check = /dev/zero=1`` read /dev/zero until memory ran out: a check file that is not a
    regular file (or is huge) makes the entry an error naming it; a missing one is a skip,
    as kvm-unit-tests' ``$(cat ...)`` gives; /proc and /sys files (whose size stat gives
    as 0 or 4096) are read as they are."""
    import os

    (tmp_path / "k.flat").write_bytes(b"\0")
    (tmp_path / "Y").write_text("Y\n")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "big").write_bytes(b"Y" * (1 << 20))
    cfg = tmp_path / "unittests.cfg"
    cfg.write_text(f"[zero]\nfile = k.flat\ncheck = /dev/zero=1\n"
                   f"[fifo]\nfile = k.flat\ncheck = {tmp_path}/fifo=1\n"
                   f"[big]\nfile = k.flat\ncheck = {tmp_path}/big=Y\n"
                   f"[missing]\nfile = k.flat\ncheck = {tmp_path}/nothere=Y\n"
                   f"[equal]\nfile = k.flat\ncheck = {tmp_path}/Y=Y\n"
                   f"[proc]\nfile = k.flat\ncheck = /proc/sys/kernel/ostype=Linux\n")
    t = {x.name: x for x in load(cfg)}
    assert t["zero"].error is not None and "/dev/zero: not a regular file" in t["zero"].error
    assert t["fifo"].error is not None and "fifo: not a regular file" in t["fifo"].error
    assert t["big"].error is not None and "more than the 64 KiB" in t["big"].error
    assert t["missing"].skip == f"{tmp_path}/nothere not equal to Y" and t["missing"].error is None
    assert t["equal"].skip is None and t["equal"].error is None
    assert t["proc"].skip is None and t["proc"].error is None


@pytest.mark.parametrize("value", ["0", "0s", "8d", "9" * 400, "99999999h"])
def test_kut_timeouts_that_would_never_pass_are_entry_errors(tmp_path, value):
    with pytest.raises(ValueError, match="is not a number of seconds between 0 and 604800"):
        kut.parse_timeout(value)
    (tmp_path / "k.flat").write_bytes(b"\0")
    (tmp_path / "unittests.cfg").write_text(f"[t]\nfile = k.flat\ntimeout = {value}\n")
    (t,) = load(tmp_path / "unittests.cfg")
    assert t.error is not None and "timeout" in t.error


def test_entries_know_their_line_for_pytest_reports(tmp_path):
    (tmp_path / "unittests.cfg").write_text("# c\n[a]\nfile = k\n\n[b]\nfile = k\n")
    assert [(t.name, t.line) for t in load(tmp_path / "unittests.cfg")] == [("a", 1), ("b", 4)]
    (tmp_path / "pyvmm.toml").write_text('[defaults]\ntimeout = 1\n[tests.a]\nkernel = "k"\n'
                                         '\n[ tests . "b c" ]\nkernel = "k"\n')
    assert [(t.name, t.line) for t in load(tmp_path / "pyvmm.toml")] == [("a", 2), ("b c", 5)]


def test_which_files_pytest_collects():
    assert is_suite_file(Path("x86/unittests.cfg")) and is_suite_file(Path("pyvmm.toml"))
    assert is_suite_file(Path("smoke.pyvmm.toml"))
    assert not is_suite_file(Path("pyproject.toml")) and not is_suite_file(Path("setup.cfg"))


def test_manifest_module_documents_every_key():
    for key in manifest.KEYS - {"skip"}:
        assert f"\n    {key} =" in (manifest.__doc__ or ""), key


@pytest.mark.parametrize("name, safe", [("..", "_.."), (".", "_."), ("a/../b", "a_.._b"),
                                        ("ok-1.2", "ok-1.2"), ("", "_")])
def test_output_directory_names_stay_inside(name, safe):
    from pyvmm.suite.execute import safe_name

    assert safe_name(name) == safe


@pytest.mark.parametrize("words", ["2", "-append cpuid", " -cpu max,+x2apic\t-m 2048 ", "x=y"])
def test_plain_words_split_as_bash_splits_them(words, tmp_path):
    import subprocess

    p = subprocess.run(["bash", "-c", 'eval "set -- $1" && printf "%s\\0" "$@"', "_", words],
                       capture_output=True, check=True)
    assert kut.expand(words, tmp_path) == [w.decode() for w in p.stdout.split(b"\0")[:-1]]


def test_output_that_cannot_be_saved_is_one_output_error(tmp_path):
    """Before: an -o tree that could not be written failed the test with a traceback."""
    from pyvmm.errors import ExitStatus, OutputError
    from pyvmm.suite.execute import save_output
    from pyvmm.suite.model import TestOutcome

    (tmp_path / "afile").write_text("")
    t = SuiteTest("t", tmp_path / "k", tmp_path / "m.toml", style=MANIFEST)
    why = r"^cannot save the output of t in .*afile/t: Not a directory$"
    with pytest.raises(OutputError, match=why) as e:
        save_output(t, TestOutcome(Verdict.PASS), tmp_path / "afile")
    assert e.value.status == ExitStatus.OUTPUT
    assert (save_output(t, TestOutcome(Verdict.PASS), tmp_path / "out") / "result").read_text() == "PASS\n"
