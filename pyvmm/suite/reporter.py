"""What ``pyvmm suite`` prints, and the TAP stream: both read the reports pytest (or, under
``-n``, pytest-xdist's controller) hands to ``pytest_runtest_logreport``, so they work the
same with one process or many.

On a terminal, one progress line is rewritten in place and only failures stay on screen;
elsewhere (CI logs, pipes) each entry gets one plain line, as kvm-unit-tests' runner
prints them (``PASS name (summary)``).  The summary at the end names every failed entry
with its failing report lines, and every timeout and crash with its reason.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

import pytest

from pyvmm.errors import ExitStatus
from pyvmm.suite.model import FAILING_PREFIXES, PROP, Verdict
from pyvmm.suite.tap import TapWriter

PHASES = ("setup", "call", "teardown")


@dataclass
class Finished:
    """One entry's end, from its report."""

    name: str
    verdict: Verdict
    reason: str = ""
    kind: str = "fail"
    summary: str = ""
    lines: list[str] = field(default_factory=list)
    duration: float = 0.0


def _props(report: pytest.TestReport) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for k, v in getattr(report, "user_properties", ()):
        if isinstance(k, str) and k.startswith(PROP):
            out.setdefault(k[len(PROP):], []).append(str(v))
    return out


def _longrepr_text(report: pytest.TestReport | pytest.CollectReport) -> str:
    lr = report.longrepr
    if isinstance(lr, tuple) and len(lr) == 3:  # a skip: (path, line, "Skipped: why")
        text = str(lr[2])
        return text.removeprefix("Skipped: ")
    text = str(lr) if lr is not None else ""
    return text.strip().splitlines()[-1] if text.strip() else ""


def _collect_error(report: pytest.CollectReport) -> tuple[str, str] | None:
    """``(what, why)`` of a config that could not be collected, else None."""
    if not report.failed:
        return None
    return report.nodeid or "collection", _longrepr_text(report)


def _name(nodeid: str) -> str:
    return nodeid.rsplit("::", 1)[-1]


def finished(report: pytest.TestReport) -> Finished | None:
    """The entry's end if this report is its last word (a skip or failure at set-up, the
    call, a failed teardown, or xdist's report of a crashed worker), else None."""
    if report.when == "setup" and report.passed:
        return None
    if report.when == "teardown" and not report.failed:
        return None
    p = _props(report)
    lines = p.get("report", [])
    if report.skipped:
        verdict, reason = Verdict.SKIP, _longrepr_text(report)
    elif report.failed:
        verdict = Verdict.FAIL
        reason = _longrepr_text(report) if report.when in PHASES else (
            f"the pytest worker died running it: {_longrepr_text(report)}")
        if report.when != "call":
            reason = reason or f"error in {report.when}"
    else:
        verdict, reason = Verdict.PASS, ""
    if verdict == Verdict.FAIL and p.get("reason"):
        reason = p["reason"][0]  # the verdict's own words; the longrepr is the first FAIL: line
    kind = (p.get("kind") or ["fail" if report.when == "call" else "crash"])[0]
    return Finished(_name(report.nodeid), verdict, reason, kind, (p.get("summary") or [""])[0],
                    lines, float(report.duration))


def failure_summary(reports: Iterable[pytest.TestReport]) -> list[str]:
    """Lines naming each failed entry, its reason and every failing report line."""
    out = []
    for r in reports:
        f = finished(r)
        if f is None or f.verdict != Verdict.FAIL:
            continue
        out += _failure_lines(f)
    return out


def _failure_lines(f: Finished) -> list[str]:
    label = {"timeout": "TIMEOUT", "crash": "CRASH", "error": "ERROR"}.get(f.kind, "FAIL")
    failing = [line for line in f.lines if line.startswith(FAILING_PREFIXES)]
    out = [f"{label} {f.name}: {f.reason}" + (f" (SUMMARY: {f.summary})" if f.summary else "")]
    out += [f"    {line}" for line in failing]
    return out


def kvm_hint(ends: Iterable[Finished]) -> str | None:
    """When no test ran and some skipped for want of KVM: one line saying so and how to
    make that a failure (a CI job on a host without KVM would otherwise pass)."""
    from pyvmm.pytest_plugin import KVM_SKIP

    ends = list(ends)
    if any(f.verdict != Verdict.SKIP for f in ends):
        return None
    kvm = [f.reason for f in ends if f.reason.startswith(KVM_SKIP)]
    if not kvm:
        return None
    return (f"no test ran: {len(kvm)} of {len(ends)} skipped because KVM is unusable "
            f"({kvm[0][len(KVM_SKIP):]}); set PYVMM_REQUIRE_KVM=1 to make that a failure")


class RunWatch:
    """What ``pyvmm suite`` says after the run besides the reporter's output: tests that
    could not save their output (status 119) and a run where KVM was missing."""

    def __init__(self) -> None:
        self.ends: list[Finished] = []
        self.output_errors: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        f = finished(report)
        if f is not None:
            self.ends.append(f)
            self.output_errors += _props(report).get("output-error", [])

    def kvm_hint(self) -> str | None:
        return kvm_hint(self.ends)


class _Out:
    """A text stream that never raises into pytest: the first failed write silences it and
    keeps why, and :meth:`stop` then ends the session with ``pyvmm run``'s status for it
    (141 when the reader left, 119 for any other write error), as the CLI ends a run."""

    def __init__(self, stream: TextIO | None, what: str) -> None:
        self.stream, self.what = stream, what
        self.status: ExitStatus | None = None
        self.why = ""

    @classmethod
    def stdout(cls) -> _Out:
        """Our own copy of stdout (pytest's capture never sees it)."""
        try:
            return cls(open(os.dup(sys.stdout.fileno()), "w", buffering=1,
                            encoding="utf-8", errors="replace"), "stdout")
        except (OSError, ValueError, AttributeError):
            return cls(None, "stdout")

    @property
    def tty(self) -> bool:
        return bool(self.stream and self.stream.isatty() and os.environ.get("TERM", "dumb") != "dumb")

    def write(self, text: str) -> None:
        if self.stream is None or self.status is not None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            self.status = ExitStatus.BROKEN_PIPE
        except (OSError, ValueError) as e:
            self.status, self.why = ExitStatus.OUTPUT, getattr(e, "strerror", None) or str(e)

    def flush(self) -> None:
        """Every write flushes (TapWriter calls this too)."""

    def stop(self, session: pytest.Session | None = None) -> None:
        """After a failed write: stop the run (pytest.exit), or, at the session's end, only
        give its status."""
        if self.status is None:
            return
        if session is not None:
            session.exitstatus = int(self.status)
            return
        pytest.exit(f"cannot write {self.what}: {self.why or 'the reader left'}",
                    returncode=int(self.status))

    def close(self) -> None:
        if self.stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self.stream.close()


class SuiteReporter:
    """pyvmm suite's output in place of pytest's terminal reporter."""

    def __init__(self) -> None:
        self.out = _Out.stdout()
        self.total = 0
        self.running: set[str] = set()
        self.done: list[Finished] = []
        self.collect_errors: list[tuple[str, str]] = []
        self.start = time.monotonic()
        self.status_shown = False

    # --- collection ----------------------------------------------------------------
    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        error = _collect_error(report)
        if error:
            self.collect_errors.append(error)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.total = max(self.total, len(ids))

    # --- running -------------------------------------------------------------------
    def pytest_runtest_logstart(self, nodeid: str, location: Any) -> None:
        self.running.add(_name(nodeid))
        self._status()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        f = finished(report)
        if f is None:
            return
        self.running.discard(f.name)
        self.done.append(f)
        if self.out.tty:
            if f.verdict == Verdict.FAIL:
                self._line(" ".join(self._plain(f)))
            self._status()
        else:
            self._line(" ".join(self._plain(f)))
        self.out.stop()

    def _plain(self, f: Finished) -> list[str]:
        detail = f.reason if f.verdict != Verdict.PASS else (f.summary or f"{f.duration:.2f} s")
        return [f"{f.verdict.value:4}", f.name] + ([f"({detail})"] if detail else [])

    def _line(self, text: str) -> None:
        self.out.write(("\r\x1b[K" if self.status_shown else "") + text + "\n")
        self.status_shown = False

    def _status(self) -> None:
        if not self.out.tty:
            return
        counts = self._counts()
        running = ", ".join(sorted(self.running))
        text = (f"[{len(self.done)}/{self.total or '?'}] {counts['PASS']} passed, "
                f"{counts['FAIL']} failed, {counts['SKIP']} skipped"
                + (f" | running: {running}" if running else ""))
        self.out.write("\r\x1b[K" + text[: self._width() - 1])
        self.status_shown = True

    def _width(self) -> int:
        try:
            columns = os.get_terminal_size(self.out.stream.fileno()).columns if self.out.stream else 0
        except OSError:
            columns = 0
        return columns if columns >= 40 else 80

    def _counts(self) -> dict[str, int]:
        counts = {v.value: 0 for v in Verdict}
        for f in self.done:
            counts[f.verdict.value] += 1
        return counts

    # --- the end -------------------------------------------------------------------
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.status_shown:
            self.out.write("\r\x1b[K")
            self.status_shown = False
        failed = [f for f in self.done if f.verdict == Verdict.FAIL]
        if self.collect_errors or failed:
            self.out.write("\nFailures:\n")
            for what, why in self.collect_errors:
                self.out.write(f"ERROR {what}: {why}\n")
            for f in failed:
                for line in _failure_lines(f):
                    self.out.write(line + "\n")
        c = self._counts()
        kinds = [f.kind for f in failed]
        extra = "".join(f", {kinds.count(k)} {word}" for k, word in
                        (("timeout", "timed out"), ("crash", "crashed")) if k in kinds)
        self.out.write(f"\nSUMMARY: {len(self.done)} tests, {c['PASS']} passed, {c['FAIL']} failed"
                       f"{extra}, {c['SKIP']} skipped in {time.monotonic() - self.start:.1f} s\n")
        self.out.stop(session)
        self.out.close()


class TapPlugin:
    """``--pyvmm-tap FILE``: a TAP point per suite entry as it finishes."""

    def __init__(self, target: str) -> None:
        self.out = _Out.stdout() if target == "-" else _Out(open(target, "w", encoding="utf-8"), target)  # noqa: SIM115
        self.writer = TapWriter(self.out)
        self.collect_errors: list[tuple[str, str]] = []

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        error = _collect_error(report)
        if error:
            self.collect_errors.append(error)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        f = finished(report)
        if f is not None:
            self.writer.add(f.name, f.verdict, f.reason, f.lines, f.duration)
            self.out.stop()

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        for what, why in self.collect_errors:
            self.writer.add(what, Verdict.FAIL, f"{what}: {why}")
        self.writer.close()
        self.out.stop(session)
        self.out.close()
