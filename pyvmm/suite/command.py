"""``pyvmm suite``: the front over pytest for suites of test kernels.

It runs ``pytest CONFIG`` in this process with pyvmm's suite plugin, its own reporter in
place of pytest's, pytest-xdist for ``-j`` and pytest's own JUnit writer; what pytest
would take from a ``pytest.ini`` around the config is left out (``-c /dev/null``), so a
suite runs the same from any directory.  ``--pytest-args`` passes anything else through
(``--tx ssh=host//python=python3`` to run on other KVM hosts, ``-k``, ``-x``).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

import click

from pyvmm.console import CLOSED_FDS, out, say, silence_stdout
from pyvmm.errors import ExitStatus, OutputError

#: pytest's exit codes -> ours
PYTEST_OK, PYTEST_USAGE, PYTEST_NO_TESTS = 0, 4, 5


def pytest_args(config: Path, tests: tuple[str, ...], *, jobs: int, groups: tuple[str, ...],
                timeout_scale: float, output: str | None, tap: bool, junit: str | None,
                run_unsupported: bool, run_all: bool, extra: str = "") -> list[str]:
    """The pytest command line ``pyvmm suite`` runs."""
    args = [str(config), "-c", os.devnull, "--rootdir", str(config.parent.resolve()),
            "-p", "no:cacheprovider", "-p", "no:terminal",
            "--pyvmm-timeout-scale", str(timeout_scale)]
    args += [a for t in tests for a in ("--pyvmm-select", t)]
    args += [a for g in groups for a in ("--pyvmm-group", g)]
    if jobs > 1:
        args += ["-n", str(jobs)]
    else:
        args += ["-p", "no:xdist"]
    if output:
        args += ["--pyvmm-output", output]
    if tap:
        args += ["--pyvmm-tap", "-"]
    else:
        args += ["--pyvmm-report"]
    if junit:
        args += ["--junitxml", junit, "-o", "junit_family=xunit1", "-o", "junit_logging=all",
                 "-o", f"junit_suite_name={config.stem}"]
    if run_unsupported:
        args += ["--pyvmm-run-unsupported"]
    if run_all:
        args += ["--pyvmm-run-all"]
    return args + shlex.split(extra)


def _timeout_scale(ctx: click.Context, param: click.Parameter, value: float) -> float:
    from pyvmm.suite.plugin import MAX_TIMEOUT_SCALE

    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_SCALE):
        raise click.BadParameter(f"{value} is not a factor above 0 and at most "
                                 f"{MAX_TIMEOUT_SCALE:g}")
    return value


@contextlib.contextmanager
def standard_streams() -> Iterator[None]:
    """``sys.stdin``/``stdout``/``stderr`` as file objects while pytest runs.  When a
    standard fd was closed at start-up Python sets the stream (and ``sys.__stderr__``) to
    None, and pytest's faulthandler and capture plugins fail on that before any test; the
    entry point has put /dev/null on the fd since, so the stream opens on it."""
    saved = {n: (getattr(sys, n), getattr(sys, f"__{n}__")) for n in ("stdin", "stdout", "stderr")}
    opened: list[io.TextIOWrapper] = []
    try:
        for fd, name in enumerate(("stdin", "stdout", "stderr")):
            if getattr(sys, name) is None or getattr(sys, f"__{name}__") is None:
                with contextlib.suppress(OSError):
                    f = open(fd, "r" if fd == 0 else "w", encoding="utf-8",  # noqa: SIM115
                             errors="backslashreplace", closefd=False)
                    opened.append(f)
                    setattr(sys, name, getattr(sys, name) or f)
                    setattr(sys, f"__{name}__", getattr(sys, f"__{name}__") or f)
        yield
    finally:
        for name, (stream, original) in saved.items():
            setattr(sys, name, stream)
            setattr(sys, f"__{name}__", original)


@click.command()
@click.argument("config", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.argument("tests", nargs=-1)
@click.option("-j", "--jobs", type=click.IntRange(1, 1024), default=os.cpu_count() or 1,
              show_default="the number of CPUs", help="Run N tests at a time (pytest-xdist).")
@click.option("-g", "--group", "groups", multiple=True, metavar="GROUP",
              help="Only tests of GROUP (nodefault tests of it included); repeatable.")
@click.option("--timeout-scale", type=float, callback=_timeout_scale, default=1.0,
              show_default=True, help="Multiply each test's timeout (default 90 s) by F.")
@click.option("-o", "--output", default=None, metavar="DIR",
              help="Keep each test's command line, serial output and stderr in DIR/NAME/.")
@click.option("--tap", is_flag=True, help="Print TAP version 13 (a subtest per report line) "
              "instead of the progress output.")
@click.option("--junit", default=None, metavar="FILE",
              help="Write JUnit XML: a testcase per test, report lines as properties, the "
              "serial output as system-out.")
@click.option("--list", "list_only", is_flag=True,
              help="List the tests, with the reason any would be skipped, and run nothing.")
@click.option("--run-unsupported", is_flag=True, help="Run tests that need QEMU machines, "
              "devices or CPUID pyvmm cannot give (skipped by default, with the reason).")
@click.option("-a", "--all", "run_all", is_flag=True, help="Run nodefault tests too.")
@click.option("--pytest-args", "extra", default="", metavar="ARGS",
              help="More pytest arguments, e.g. '--tx ssh=host//python=python3 -x'.")
def suite(config: Path, tests: tuple[str, ...], jobs: int, groups: tuple[str, ...],
          timeout_scale: float, output: str | None, tap: bool, junit: str | None,
          list_only: bool, run_unsupported: bool, run_all: bool, extra: str) -> int:
    """Run CONFIG's tests: a kvm-unit-tests unittests.cfg or a pyvmm manifest (.toml).

    TESTS are names or shell globs; all tests when none.  Exit status 0 when no test
    failed, 1 when one did, 2 for a config or option error, 119 when output cannot be
    written.
    """
    if list_only:
        return list_tests(config, tests, groups, run_unsupported, run_all)
    from pyvmm.errors import ConfigError
    from pyvmm.suite import SuiteConfigError
    from pyvmm.suite.files import read_config
    from pyvmm.suite.outputs import check_file_target, check_output_dir

    try:  # a FIFO, a device or a huge file is no config: one line, before pytest sees it
        read_config(config)
    except SuiteConfigError as e:
        raise ConfigError(str(e)) from None
    # every output is checked before any test runs: a usage problem is one line and 2
    if output:
        check_output_dir(output)
    if junit:
        check_file_target(junit)
    if 1 in CLOSED_FDS:
        raise OutputError("cannot write the suite's output: stdout is closed")
    with tempfile.TemporaryDirectory(prefix="pyvmm-suite-") as private:
        xml = Path(private) / "junit.xml" if junit else None
        rc = _run(config, tests, jobs=jobs, groups=groups, timeout_scale=timeout_scale,
                  output=output, tap=tap, junit=str(xml) if xml else None,
                  run_unsupported=run_unsupported, run_all=run_all, extra=extra)
        # pytest writes none when nothing ran (status 2) and may not when stopped by a signal
        if xml is not None and junit is not None and (xml.exists() or rc in (0, 1)):
            from pyvmm.suite.outputs import deliver

            deliver(xml, junit)  # OutputError (119, one line) when it cannot be written
    return rc


def _run(config: Path, tests: tuple[str, ...], *, jobs: int, groups: tuple[str, ...],
         timeout_scale: float, output: str | None, tap: bool, junit: str | None,
         run_unsupported: bool, run_all: bool, extra: str) -> int:
    """pytest over the suite, and ``pyvmm suite``'s status for how it went."""
    import pytest

    from pyvmm.suite.reporter import RunWatch

    jobs = min(jobs, runnable(config, tests, groups, run_unsupported, run_all))
    args = pytest_args(config, tests, jobs=jobs, groups=groups, timeout_scale=timeout_scale,
                       output=output, tap=tap, junit=junit, run_unsupported=run_unsupported,
                       run_all=run_all, extra=extra)
    caught: list[int] = []
    watch = RunWatch()

    def stop(signum: int, frame: FrameType | None) -> None:
        caught.append(signum)
        raise KeyboardInterrupt  # pytest's way to stop a session (and xdist's workers)

    old = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        with standard_streams():
            rc = int(pytest.main(args, plugins=[watch]))
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if caught:
        say(f"interrupted ({signal.Signals(caught[0]).name})")
        return 128 + caught[0]
    if rc == PYTEST_NO_TESTS:
        say(f"no tests in {config}" + (f" match {' '.join(tests)}" if tests else "")
            + (f" in groups {', '.join(groups)}" if groups else ""))
        return int(ExitStatus.USAGE)
    if rc == PYTEST_USAGE:
        return int(ExitStatus.USAGE)
    if rc == ExitStatus.BROKEN_PIPE:  # the reader of our output left: quiet, as `pyvmm run`
        silence_stdout()
        return rc
    if rc == ExitStatus.OUTPUT:
        say("cannot write the suite's output to stdout; the suite was stopped")
        return rc
    if watch.output_errors:
        say(watch.output_errors[0])
        return int(ExitStatus.OUTPUT)
    hint = watch.kvm_hint()
    if hint:
        say(hint)
    return 0 if rc == PYTEST_OK else 1  # failures, or a config that could not be collected


def runnable(config: Path, tests: tuple[str, ...], groups: tuple[str, ...],
             run_unsupported: bool, run_all: bool) -> int:
    """How many selected tests will boot a kernel: more workers than that only cost start-up
    time (about 0.5 s of CPU each).  A config that cannot be read counts as one: pytest
    reports it."""
    from pyvmm.suite import SuiteConfigError, load, select

    try:
        found = select(load(config, run_all=run_all, groups_selected=bool(groups)), tests, groups)
    except SuiteConfigError:
        return 1
    return max(1, sum(t.skip_reason(run_unsupported) is None and t.error is None for t in found))


def list_tests(config: Path, tests: tuple[str, ...], groups: tuple[str, ...],
               run_unsupported: bool, run_all: bool) -> int:
    from pyvmm.errors import ConfigError
    from pyvmm.suite import SuiteConfigError, load, select

    try:
        found = select(load(config, run_all=run_all, groups_selected=bool(groups)), tests, groups)
    except SuiteConfigError as e:
        raise ConfigError(str(e)) from None
    for t in found:
        reason = t.skip_reason(run_unsupported)
        groups_text = f" [{' '.join(t.groups)}]" if t.groups else ""
        status = f"  ERROR: {t.error}" if t.error else f"  SKIP: {reason}" if reason else ""
        out(f"{t.name}{groups_text}{status}\n")
        for note in t.notes:
            out(f"    note: {note}\n")
    return 0 if found else int(ExitStatus.USAGE)
