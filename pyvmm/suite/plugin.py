"""The pytest side of suites: each entry of a ``unittests.cfg`` or pyvmm manifest is a
pytest item (registered through the ``pytest11`` entry point).

``pytest x86/unittests.cfg`` or ``pytest --pyvmm-suite CONFIG`` collects one; files named
``unittests.cfg``, ``pyvmm.toml`` or ``*.pyvmm.toml`` are collected when pytest walks a
directory.  So pytest-xdist's ``-n`` runs entries in parallel (``--tx ssh=...`` across KVM
hosts), ``--junitxml`` writes JUnit (``-o junit_family=xunit1`` keeps the report lines as
properties, ``-o junit_logging=all`` the serial output and the crash report), ``-k``/``-m GROUP``
select, and conftest hooks see every entry.  A kernel's report lines are the item's
``user_properties`` (``pyvmm.report``), its serial output the captured stdout, and a
failure's message is its first failing line or the crash/timeout reason.
"""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path
from typing import Any

import pytest

from pyvmm.errors import ConfigError, OutputError
from pyvmm.suite import SuiteConfigError, is_suite_file, load
from pyvmm.suite.model import PROP, SuiteTest, Verdict

#: the largest --timeout-scale: with the longest timeout a config may give, still a
#: deadline the host's clock and timers can hold
MAX_TIMEOUT_SCALE = 1000.0


class SuiteFailure(Exception):
    """A suite entry failed; the message is its headline."""


def timeout_scale(text: str) -> float:
    """``--pyvmm-timeout-scale``: a finite factor above 0 and at most
    :data:`MAX_TIMEOUT_SCALE` (NaN or ``inf`` would make every timeout never pass)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (0 < value <= MAX_TIMEOUT_SCALE) or math.isnan(value):
        raise argparse.ArgumentTypeError(
            f"{text} is not a factor above 0 and at most {MAX_TIMEOUT_SCALE:g}")
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("pyvmm-suite", "pyvmm suites (unittests.cfg, pyvmm manifests)")
    g.addoption("--pyvmm-suite", action="append", default=[], metavar="CONFIG",
                help="Collect this unittests.cfg or pyvmm manifest (.toml).")
    g.addoption("--pyvmm-select", action="append", default=[], metavar="NAME",
                help="Run only suite entries with this name or matching this shell glob.")
    g.addoption("--pyvmm-group", action="append", default=[], metavar="GROUP",
                help="Run only suite entries of this group (nodefault ones included).")
    g.addoption("--pyvmm-run-all", action="store_true",
                help="Run nodefault entries too (run_tests.sh -a).")
    g.addoption("--pyvmm-run-unsupported", action="store_true",
                help="Run entries that need QEMU devices or CPUID pyvmm cannot give.")
    g.addoption("--pyvmm-timeout-scale", type=timeout_scale, default=1.0, metavar="F",
                help="Multiply every entry's timeout by F.")
    g.addoption("--pyvmm-output", metavar="DIR", default=None,
                help="Keep each entry's command line, serial output and stderr in DIR/NAME/.")
    g.addoption("--pyvmm-tap", metavar="FILE", default=None,
                help="Write TAP version 13 to FILE ('-': stdout), a subtest per report line.")
    g.addoption("--pyvmm-report", action="store_true",
                help="pyvmm suite's own output: a progress line (plain lines when not a "
                     "terminal) and a summary of every failure (use with -p no:terminal).")


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    suites = config.getoption("pyvmm_suite")
    if suites and not _is_worker(config):
        # xdist workers get the controller's arguments, these included
        if config.args_source != pytest.Config.ArgsSource.ARGS:
            config.args = []
        config.args += [str(Path(s)) for s in suites]
    if _is_worker(config):
        return
    output = config.getoption("pyvmm_output")
    if output:  # before any test runs: a path that cannot be a directory fails no test
        from pyvmm.suite.outputs import check_output_dir

        try:
            check_output_dir(output, "--pyvmm-output")
        except ConfigError as e:
            raise pytest.UsageError(str(e)) from None
    tap = config.getoption("pyvmm_tap")
    if tap:
        from pyvmm.suite.reporter import TapPlugin

        config.pluginmanager.register(TapPlugin(tap), "pyvmm-suite-tap")
    if config.getoption("pyvmm_report"):
        from pyvmm.suite.reporter import SuiteReporter

        config.pluginmanager.register(SuiteReporter(), "pyvmm-suite-reporter")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if is_suite_file(file_path) or (file_path.suffix in (".cfg", ".toml")
                                    and parent.session.isinitpath(file_path)):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


class SuiteFile(pytest.File):
    """A suite config: its entries, in config order."""

    def collect(self) -> list[pytest.Item]:
        opt = self.config.option
        try:
            tests = load(self.path, run_all=opt.pyvmm_run_all,
                         groups_selected=bool(opt.pyvmm_group))
        except SuiteConfigError as e:
            raise self.CollectError(str(e)) from None
        items: list[pytest.Item] = []
        for t in tests:
            item = SuiteItem.from_parent(self, name=t.name, test=t)
            for group in t.groups:
                if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", group):
                    self.config.addinivalue_line("markers", f"{group}: suite group")
                    item.add_marker(group)
            items.append(item)
        return items


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    from pyvmm.suite import select

    names, groups = config.getoption("pyvmm_select"), config.getoption("pyvmm_group")
    if not names and not groups:
        return
    suite = [i.test for i in items if isinstance(i, SuiteItem)]
    keep = {id(t) for t in select(suite, names, groups)}
    selected = [i for i in items if not isinstance(i, SuiteItem) or id(i.test) in keep]
    deselected = [i for i in items if isinstance(i, SuiteItem) and id(i.test) not in keep]
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = selected


class SuiteItem(pytest.Item):
    """One suite entry: boots its kernel in this process (an xdist worker under ``-n``)."""

    def __init__(self, *, test: SuiteTest, **kw: Any) -> None:
        super().__init__(**kw)
        self.test = test

    def runtest(self) -> None:
        from pyvmm.pytest_plugin import require_kvm, skip_here
        from pyvmm.suite.execute import run_test, save_output

        t, opt = self.test, self.config.option
        self.user_properties.append((PROP + "command", t.describe()))
        for note in t.notes:
            self.user_properties.append((PROP + "note", note))
        if t.error:
            self.user_properties += [(PROP + "verdict", Verdict.FAIL.value), (PROP + "kind", "error")]
            raise SuiteFailure(t.error)
        reason = t.skip_reason(opt.pyvmm_run_unsupported)
        if reason:
            self.user_properties.append((PROP + "verdict", Verdict.SKIP.value))
            skip_here(reason)
        require_kvm()
        out = run_test(t, timeout_scale=opt.pyvmm_timeout_scale,
                       run_unsupported=opt.pyvmm_run_unsupported)
        if opt.pyvmm_output:
            try:
                save_output(t, out, Path(opt.pyvmm_output))
            except OutputError as e:
                # the run's own verdict stays in the properties; `pyvmm suite` ends with 119
                self.user_properties += [(PROP + "verdict", Verdict.FAIL.value),
                                         (PROP + "kind", "error"), (PROP + "output-error", str(e))]
                raise SuiteFailure(str(e)) from None
        self.user_properties += [(PROP + "verdict", out.verdict.value),
                                 (PROP + "kind", out.kind), (PROP + "status", str(out.status)),
                                 (PROP + "duration", f"{out.duration:.3f}")]
        if out.summary:
            self.user_properties.append((PROP + "summary", out.summary))
        if out.reason:
            self.user_properties.append((PROP + "reason", out.reason))
        self.user_properties += [(PROP + "report", line) for line in out.lines]
        self.user_properties += [(PROP + "note", note) for note in out.notes]
        if out.serial:
            self.add_report_section("call", "stdout", out.serial)
        if out.stderr:
            self.add_report_section("call", "stderr", out.stderr)
        if out.verdict == Verdict.SKIP:
            skip_here(out.reason)
        if out.verdict == Verdict.FAIL:
            raise SuiteFailure(out.headline())

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException],
                     style: Any = None) -> Any:
        if isinstance(excinfo.value, SuiteFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.test.line, f"{self.path.name}::{self.name}"


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """Under plain pytest: name every failed suite entry with its failing report lines,
    and say how to make a run that skipped everything for want of KVM a failure."""
    from pyvmm.suite.reporter import failure_summary, finished, kvm_hint

    reports = [r for r in terminalreporter.stats.get("failed", [])
               if any(k.startswith(PROP) for k, _ in getattr(r, "user_properties", ()))]
    lines = failure_summary(reports)
    if lines:
        terminalreporter.write_sep("=", "pyvmm suite failures")
        for line in lines:
            terminalreporter.write_line(line)
    ends = [f for key in ("passed", "failed", "skipped")
            for r in terminalreporter.stats.get(key, []) if isinstance(r, pytest.TestReport)
            for f in [finished(r)] if f is not None]
    hint = kvm_hint(ends)
    if hint:
        terminalreporter.write_line(f"pyvmm: {hint}")
