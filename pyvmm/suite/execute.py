"""Running one suite entry in this process and giving its verdict.

The machine is the one ``pyvmm run`` would build from the entry's command line
(:meth:`SuiteTest.command_line`); the verdict follows the entry's rules: kvm-unit-tests'
exit-status table for ``unittests.cfg`` entries, the expected status and output for
manifest entries.
"""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

from pyvmm.errors import OutputError, PyvmmError
from pyvmm.loader.source import shown
from pyvmm.suite import kut
from pyvmm.suite.model import KUT, SuiteTest, TestOutcome, Verdict, report_lines
from pyvmm.vstate.history import HistoryLimits
from pyvmm.vstate.result import RunResult, RunStatus, exit_status

#: what a suite keeps of a test's output (reports come from the serial lines)
HISTORY = HistoryLimits(serial=1 << 20, events=64)
QEMU_PASS, QEMU_SKIP = 1, 77


def kut_verdict(r: RunResult, timeout: float) -> tuple[Verdict, str, int]:
    """``(verdict, reason, status)`` by kvm-unit-tests' rules, ``status`` as its runner
    sees it after ``run_qemu``'s fix-up."""
    if r.status == RunStatus.EXIT:
        qemu = exit_status(r, qemu=True)
        status = 0 if qemu == QEMU_PASS else qemu
        if status == 0:
            return Verdict.PASS, "", 0
        if status == QEMU_SKIP:
            return Verdict.SKIP, "the test skipped itself (status 77)", status
        return Verdict.FAIL, f"exit status {status} (debug-exit value {r.exit_code})", status
    if r.status == RunStatus.DONE:
        return Verdict.PASS, "", 0
    if r.status == RunStatus.TIMEOUT:
        return Verdict.FAIL, f"timeout; duration={timeout:g}s", 124
    if r.status == RunStatus.CRASH and r.crash is not None:
        return Verdict.FAIL, f"crash: {r.crash.reason} at RIP {r.crash.rip:#x}" + (
            f" <{r.crash.symbol}>" if r.crash.symbol else ""), 1
    if r.status in (RunStatus.SHUTDOWN, RunStatus.STOPPED):
        # QEMU exits 0 when the guest stops without debug-exit: run_qemu calls that a failure
        return Verdict.FAIL, f"{r.status} without debug-exit ({r.message})", 1
    return Verdict.FAIL, f"{r.status}: {r.message}", exit_status(r)


def manifest_verdict(t: SuiteTest, r: RunResult) -> tuple[Verdict, str, int]:
    status = exit_status(r)
    if status != t.expect_status:
        why = r.message if r.status != RunStatus.EXIT else f"debug-exit value {r.exit_code}"
        if r.crash is not None:
            why = r.crash.reason
        return Verdict.FAIL, f"exit status {status}, expected {t.expect_status} ({why})", status
    if t.expect_output is not None and not re.search(t.expect_output, r.text, re.M):
        return Verdict.FAIL, f"output does not match {t.expect_output!r}", status
    return Verdict.PASS, "", status


def cpu_feature_problems(t: SuiteTest) -> tuple[list[str], list[str]]:
    """``(flags to apply, why others cannot be honoured)`` for the entry's ``-cpu`` flags:
    a flag pyvmm does not know, one KVM cannot add, or one this host's KVM is known
    (``pyvmm doctor``'s set-cpuid probe) to ignore when asked to hide it."""
    from pyvmm.doctor import cpuid_ignored
    from pyvmm.errors import ConfigError
    from pyvmm.kvm import Kvm
    from pyvmm.x86.cpuid import parse_cpu_features

    if not t.cpu_features:
        return [], []
    with Kvm() as kvm:
        supported = kvm.get_supported_cpuid()
    usable, problems = [], []
    for flag in t.cpu_features:
        try:
            wanted = parse_cpu_features(flag, supported)
        except ConfigError as e:
            problems.append(str(e))
            continue
        hidden = [name for name, on in wanted.items() if not on]
        ignored = cpuid_ignored(",".join(f"-{n}" for n in hidden)) if hidden else []
        if ignored:
            problems.append(f"needs CPUID {flag}, but this host's KVM ignores KVM_SET_CPUID2 for "
                            f"{', '.join(ignored)} (pyvmm doctor: set-cpuid)")
        usable.append(flag)
    return usable, problems


def run_test(t: SuiteTest, *, timeout_scale: float = 1.0, run_unsupported: bool = False) -> TestOutcome:
    """Boot and run ``t``; every failure of the set-up (a kernel that does not load, a
    setting this host cannot give) is the test's FAIL with its reason, never an error of
    the suite; CPUID it cannot give as asked is a SKIP (run anyway, with a note, under
    ``run_unsupported``)."""
    from pyvmm.machine import Machine

    timeout = t.timeout * timeout_scale
    t0 = time.monotonic()
    features, problems = cpu_feature_problems(t)
    if problems and not run_unsupported:
        return TestOutcome(Verdict.SKIP, "; ".join(problems), duration=time.monotonic() - t0)
    kw: dict[str, Any] = {"cpus": t.cpus, "irqchip": t.irqchip, "history": HISTORY}
    if t.mem:
        kw["mem"] = t.mem
    if t.pit is not None:
        kw["pit"] = t.pit
    if features:
        kw["cpu_features"] = ",".join(features)
    with tempfile.TemporaryDirectory(prefix="pyvmm-suite-") as tmp:
        initrd = t.initrd
        if t.style == KUT and initrd is None:
            initrd = kut.environ_file(t, Path(tmp))  # as ENVIRON_DEFAULT=yes
        try:
            with Machine.from_file(t.kernel, cmdline=t.append, initrd=initrd, **kw) as m:
                r = m.run(timeout=timeout)
        except PyvmmError as e:
            return TestOutcome(Verdict.FAIL, f"cannot run: {e}", stderr=str(e), kind="error",
                               duration=time.monotonic() - t0, status=int(e.status), notes=problems)
    verdict, reason, status = kut_verdict(r, timeout) if t.style == KUT else manifest_verdict(t, r)
    lines, summary = report_lines(r.text)
    stderr = r.crash.format() if r.crash is not None else (r.message if verdict == Verdict.FAIL else "")
    kind = {RunStatus.TIMEOUT: "timeout", RunStatus.CRASH: "crash"}.get(r.status, "fail")
    out = TestOutcome(verdict, reason, lines, summary, r.text, stderr,
                      time.monotonic() - t0, status, kind, problems)
    if verdict == Verdict.PASS and out.failing_lines and t.style != KUT:
        out.verdict, out.reason = Verdict.FAIL, out.failing_lines[0]
    return out


def safe_name(name: str) -> str:
    """``name`` as one path component: no separators, never ``.`` or ``..``."""
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", name)
    return safe if safe.strip(".") else f"_{safe}"


def save_output(t: SuiteTest, out: TestOutcome, root: Path) -> Path:
    """``root/NAME/``: ``cmdline`` (the ``pyvmm run`` command that reruns it), ``serial.log``,
    ``stderr.log`` and ``result`` (verdict and reason).  OutputError (one line) when they
    cannot be written: ``root`` was checked before the run, so that is a full disk or the
    like, never a usage problem."""
    d = root / safe_name(t.name)
    try:
        d.mkdir(parents=True, exist_ok=True)
        (d / "cmdline").write_text(t.describe() + "\n")
        (d / "serial.log").write_text(out.serial)
        newline = "\n" if out.stderr and not out.stderr.endswith("\n") else ""
        (d / "stderr.log").write_text(out.stderr + newline)
        (d / "result").write_text(f"{out.verdict} {out.reason}".rstrip() + "\n")
    except OSError as e:
        raise OutputError(f"cannot save the output of {t.name} in {shown(d)}: "
                          f"{e.strerror or e}") from None
    return d
