"""What ``pyvmm run hello`` imports: a guard on start-up cost that is not a timing.

Start-up is most of the cost of running a small guest (bench/run.py, row 3), and most of
that is imports.  A module that the plain path has no use for, pulled in by a new
top-level import somewhere, costs every CLI run, CI job and restarting fuzzer; this test
names it and who imported it.  The list is of modules that are off the path today and must
stay off: what only other commands or options need (debugging, snapshots, traces, suites,
the doctor, the PC platform, guest builds) and heavy library modules nothing on the path
needs.  The imports come from CPython's own ``-X importtime`` report
(``PYTHONPROFILEIMPORTTIME``), which also sees a process that ends without unwinding.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cli import pyvmm

#: modules (and their submodules) ``pyvmm run`` of an ELF64 guest without options must not
#: import, each with the reason
FORBIDDEN: dict[str, str] = {
    "elftools": "pyelftools: symbols are decoded on first use, and hello needs none",
    "cffi": "the build-time package: the extension needs only _cffi_backend",
    "pycparser": "cffi's C parser, build time only",
    "pytest": "the test framework (pyvmm's plugins load only under pytest)",
    "_pytest": "the test framework",
    "pluggy": "pytest's plugin machinery",
    "click": "the CLI's parser: pyvmm.runargs reads a plain `pyvmm run GUEST` (click.core "
             "drags in inspect, datetime, uuid, platform and gettext)",
    "json": "trace, snapshot and report output only",
    "dataclasses": "code generated per class at import, and inspect: the path's value classes "
                   "are pyvmm.record's",
    "inspect": "ast, dis and tokenize with it (dataclasses and click imported it)",
    "typing": "annotations only: TYPE_CHECKING = False, Protocols under it (and re with it)",
    "re": "the regex compiler (typing imported it; dirty pages import it on use)",
    "traceback": "formatting a VMM error only (linecache, tokenize, textwrap with it)",
    "contextlib": "try/except and a class where the path needs it",
    "subprocess": "guest builds and the doctor only",
    "socket": "the gdb stub only",
    "selectors": "the gdb stub only",
    "asyncio": "nothing of pyvmm",
    "concurrent": "suites only",
    "multiprocessing": "nothing of pyvmm",
    "logging": "nothing of pyvmm",
    "tempfile": "guest builds only",
    "shutil": "guest builds only",
    "pathlib": "str paths on the run path",
    "tomllib": "suite manifests only",
    "argparse": "the CLI is click",
    "email": "importlib.metadata's, not needed to run",
    "importlib.metadata": "package metadata (--version only)",
    "zipfile": "nothing of a run",
    "tarfile": "nothing of a run",
    "hashlib": "snapshot and doctor caches only",
    "random": "nothing of a run",
    "ctypes": "the extension is cffi",
    "xml": "JUnit reports only",
    "unittest": "tests only",
    "pyvmm.debug": "the debugger, gdb stub and cores (--gdb, --core)",
    "pyvmm.doctor": "pyvmm doctor",
    "pyvmm.hostinfo": "the doctor's host facts",
    "pyvmm.suite": "pyvmm suite",
    "pyvmm.pytest_plugin": "pytest only",
    "pyvmm.guest": "pyvmm guest build",
    "pyvmm.probes": "the doctor's probe guest",
    "pyvmm.crash": "crash reports, only after a crash",
    "pyvmm.snapshot_file": "snapshot files (--save-at-sync, from_snapshot)",
    "pyvmm.vstate.snapshot": "snapshots",
    "pyvmm.vstate.trace": "--trace",
    "pyvmm.kvm.stats": "KVM statistics (--stats)",
    "pyvmm.platform": "the PC platform: multiboot and Linux kernels, not an ELF64 guest",
    "pyvmm.loader.multiboot": "multiboot kernels",
    "pyvmm.devices.fw_cfg": "the PC platform's fw_cfg",
    "pyvmm.devices.hpet": "the PC platform's HPET",
    "pyvmm.devices.rtc": "the PC platform's RTC",
    "pyvmm.devices.pc_testdev": "the PC platform's test device",
}


def import_tree(report: str) -> list[tuple[str, str]]:
    """``(module, importer)`` for every line of a ``-X importtime`` report; the importer
    is the nearest later line less indented (a module is reported after its own imports),
    ``-`` for a top-level import."""
    rows = []
    for line in report.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        name = line.split("|", 2)[2]
        rows.append((len(name) - len(name.lstrip()), name.strip()))
    out = []
    for i, (depth, name) in enumerate(rows):
        parent = next((n for d, n in rows[i + 1:] if d < depth), "-")
        out.append((name, parent))
    return out


def reason(name: str) -> str | None:
    """Why ``name`` must not be on the path; None where it may be."""
    for prefix, why in FORBIDDEN.items():
        if name == prefix or name.startswith(prefix + "."):
            return why
    if name.startswith("pyvmm.") and "snapshot" in name:  # wherever the snapshot code lives
        return "snapshots (--save-at-sync, from_snapshot)"
    return None


def forbidden(tree: list[tuple[str, str]]) -> list[str]:
    """One line per forbidden module imported: the module, who imported it, and why it
    should not be there."""
    return [f"{name} (imported by {parent}): {why}" for name, parent in tree
            if (why := reason(name)) is not None]


def test_import_tree_names_the_importer() -> None:
    report = ("import time: self [us] | cumulative | imported package\n"
              "import time:        10 |         10 |     json.decoder\n"
              "import time:        10 |         20 |   json\n"
              "import time:        10 |         30 | pyvmm.machine\n"
              "import time:        10 |         10 | struct\n")
    tree = import_tree(report)
    assert tree == [("json.decoder", "json"), ("json", "pyvmm.machine"), ("pyvmm.machine", "-"),
                    ("struct", "-")]
    assert forbidden(tree) == ["json.decoder (imported by json): trace, snapshot and report "
                               "output only",
                               "json (imported by pyvmm.machine): trace, snapshot and report "
                               "output only"]


@pytest.mark.kvm
@pytest.mark.parametrize("options", [[], ["--timeout", "60", "--cpus", "2", "--mem", "64M",
                                          "--append", "x", "--exit-code", "raw"]],
                         ids=["plain", "suite-options"])
def test_pyvmm_run_hello_imports_nothing_it_does_not_use(guests: Path, options: list[str]) -> None:
    """Also with the options the suite runner writes (SuiteTest.command_line)."""
    p = pyvmm("run", str(guests / "hello.elf"), *options, env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert p.returncode == 0, p.stderr[-2000:]
    tree = import_tree(p.stderr)
    names = {n for n, _ in tree}
    # the report is read right: the path's own modules are in it
    assert {"pyvmm.entry", "pyvmm.runcmd", "pyvmm.machine", "pyvmm.kvm.native"} <= names
    bad = forbidden(tree)
    assert not bad, "pyvmm run hello imports what it does not use:\n" + "\n".join(bad)


#: what a multiboot kernel needs besides an ELF64 guest's path: the PC platform and its loader
PC_PATH = ("pyvmm.platform", "pyvmm.loader.multiboot", "pyvmm.devices.")


@pytest.mark.kvm
def test_pyvmm_run_multiboot_imports_nothing_it_does_not_use(guests: Path) -> None:
    """A kvm-unit-tests-style kernel as the suite runner starts it: the PC platform is on
    the path, nothing else of FORBIDDEN is (its dataclasses and typing were)."""
    p = pyvmm("run", str(guests / "mbtest.flat"), "--timeout", "60", "--append", "acpi",
              "--exit-code", "qemu", env={"PYTHONPROFILEIMPORTTIME": "1"})
    assert p.returncode == 1, p.stderr[-2000:]  # (0 << 1) | 1: PASS
    tree = import_tree(p.stderr)
    assert {"pyvmm.platform.pc", "pyvmm.loader.multiboot"} <= {n for n, _ in tree}
    bad = [line for line in forbidden(tree) if not line.startswith(PC_PATH)]
    assert not bad, "pyvmm run mbtest.flat imports what it does not use:\n" + "\n".join(bad)
