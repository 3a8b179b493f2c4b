"""One entry of a suite, whichever format it came from, and how it ended.

A :class:`SuiteTest` says what to boot and how (the machine settings a ``pyvmm run``
command line would give), why it is skipped if it is, and which verdict rule applies:
kvm-unit-tests' (its exit-status table, ``scripts/arch-run.bash``) for ``unittests.cfg``
entries, or the manifest's expected status and output for pyvmm's own TOML manifests.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

KUT, MANIFEST = "kvm-unit-tests", "manifest"
DEFAULT_TIMEOUT = 90.0  # kvm-unit-tests' TIMEOUT
#: the longest timeout a config may give (a week): more is a typo or a way never to stop
MAX_TIMEOUT = 7 * 86400.0
#: report lines a test kernel prints, kvm-unit-tests style
REPORT_PREFIXES = ("PASS: ", "FAIL: ", "SKIP: ", "XFAIL: ", "XPASS: ")
FAILING_PREFIXES = ("FAIL: ", "XPASS: ")


class SuiteConfigError(ValueError):
    """The suite configuration cannot be read; the message names the file and why.
    (Defined here, below the readers that raise it; ``pyvmm.suite`` re-exports it.)"""


#: the prefix of the JUnit properties a suite item records (the plugin writes them, the
#: reporter reads them back)
PROP = "pyvmm."


class Verdict(StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    SKIP = "SKIP"


@dataclass
class SuiteTest:
    name: str
    kernel: Path
    source: Path
    style: str = KUT
    cpus: int = 1
    mem: str | None = None
    append: str = ""
    initrd: Path | None = None
    timeout: float = DEFAULT_TIMEOUT
    groups: tuple[str, ...] = ()
    irqchip: str = "kernel"
    pit: bool | None = None
    cpu_features: list[str] = field(default_factory=list)
    expect_status: int = 0
    expect_output: str | None = None
    #: why the test does not run (arch, accel, check, disabled_if, nodefault), if it does not
    skip: str | None = None
    #: why its entry cannot be read (a FAIL: the config is wrong, not the host)
    error: str | None = None
    #: QEMU options pyvmm cannot honour: a SKIP unless --run-unsupported
    unsupported: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: the test's own command line in its config, for the record
    original: str = ""
    #: the line of its entry in the config (0-based; 0 when not known), where pytest
    #: reports it
    line: int = 0

    def skip_reason(self, run_unsupported: bool = False) -> str | None:
        if self.skip:
            return self.skip
        if self.unsupported and not run_unsupported:
            return "; ".join(self.unsupported)
        return None

    def command_line(self) -> list[str]:
        """The ``pyvmm run`` command that runs this test by hand."""
        cmd = ["pyvmm", "run", str(self.kernel), "--timeout", f"{self.timeout:g}"]
        if self.cpus != 1:
            cmd += ["--cpus", str(self.cpus)]
        if self.mem:
            cmd += ["--mem", self.mem]
        if self.append:
            cmd += ["--append", self.append]
        if self.initrd:
            cmd += ["--initrd", str(self.initrd)]
        if self.irqchip != "kernel":
            cmd += ["--irqchip", self.irqchip]
        if self.pit is not None:
            cmd += ["--pit" if self.pit else "--no-pit"]
        if self.cpu_features:
            cmd += [f"--cpu-features={','.join(self.cpu_features)}"]
        if self.style == KUT:
            cmd += ["--exit-code", "qemu"]
        return cmd

    def describe(self) -> str:
        return shlex.join(self.command_line())


@dataclass
class TestOutcome:
    """How one test ended: its verdict, one line saying why, the kernel's report lines and
    its ``SUMMARY:`` line, and what it printed."""

    verdict: Verdict
    reason: str = ""
    lines: list[str] = field(default_factory=list)
    summary: str = ""
    serial: str = ""
    stderr: str = ""
    duration: float = 0.0
    status: int | None = None  # the exit status `pyvmm run` (or QEMU, for kvm-unit-tests) gives
    #: how a FAIL came about: "fail" (the kernel said so), "timeout", "crash" or "error"
    kind: str = "fail"
    #: settings not given as asked (CPUID changes the host ignores, run anyway)
    notes: list[str] = field(default_factory=list)

    @property
    def failing_lines(self) -> list[str]:
        return [line for line in self.lines if line.startswith(FAILING_PREFIXES)]

    def headline(self) -> str:
        """The failure message: the first failing report line, else the reason."""
        failing = self.failing_lines
        return failing[0] if failing else self.reason


def check_timeout(value: float) -> float:
    """``value`` if it is a timeout a test can have: positive, finite and at most
    :data:`MAX_TIMEOUT` (NaN, ``inf`` or ``1e308`` would never time out); else ValueError."""
    if not (0 < value <= MAX_TIMEOUT):  # False for NaN too
        raise ValueError(f"timeout {value:g} is not a number of seconds between 0 and "
                         f"{MAX_TIMEOUT:g} (7 days)")
    return value


def report_lines(serial: str) -> tuple[list[str], str]:
    """``(report lines, SUMMARY text)`` of a kernel's output (the summary as
    kvm-unit-tests' runner extracts it: from the last lines)."""
    lines = [line.rstrip("\r") for line in serial.splitlines()]
    reports = [line for line in lines if line.startswith(REPORT_PREFIXES)]
    summary = ""
    for line in lines[-3:]:
        if line.startswith("SUMMARY: "):
            summary = line[len("SUMMARY: "):]
    return reports, summary
