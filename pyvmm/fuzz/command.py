"""``pyvmm fuzz-target GUEST [INPUT]``: a guest as AFL++'s target (docs/fuzzing.md).

Under afl-fuzz, afl-showmap, afl-tmin or afl-cmin (fds 198/199 open) it serves the
forkserver protocol (:mod:`pyvmm.fuzz.forkserver`) for as long as they want inputs.  Run
by hand it runs one input (the file INPUT, else stdin), says what happened and ends as a
crashing process would: killed by SIGSEGV or SIGABRT, so that AFL's non-forkserver mode and
shell scripts see crashes the usual way; otherwise with the guest's exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

import click

from pyvmm.config import memory_size, seconds_option
from pyvmm.console import say
from pyvmm.errors import ConfigError, ExitStatus, OutputError
from pyvmm.fuzz.forkserver import SHM_ENV, ForkServer, publish_coverage, under_afl
from pyvmm.fuzz.target import MAX_INPUT, Target


def _read_input(path: str | None) -> bytes:
    if path is None or path == "-":
        # afl-fuzz rewinds the file it gave as stdin before each input: read from offset 0
        try:
            return os.pread(0, MAX_INPUT, 0)
        except OSError:  # a pipe or a terminal
            return sys.stdin.buffer.read(MAX_INPUT)
    try:
        with open(path, "rb") as f:
            return f.read(MAX_INPUT)
    except OSError as e:
        raise ConfigError(f"input {path}: {e.strerror}") from None


@click.command("fuzz-target")
@click.argument("guest", type=click.Path(dir_okay=False, exists=True))
@click.argument("input_file", metavar="[INPUT]", required=False, type=click.Path(dir_okay=False))
@click.option("--append", "cmdline", default="", help="Guest command line.")
@click.option("--mem", default=None, help="Guest RAM (as pyvmm run's --mem).")
@click.option("--timeout", type=float, default=None, callback=seconds_option,
              help="Seconds one input may run before pyvmm stops it (a timeout).  Under "
              "afl-fuzz its own -t decides: it kills the pid pyvmm reported, pyvmm stops the "
              "guest at once, and an input pyvmm stopped first waits for that kill; default: "
              "1 s run by hand, none under AFL.")
@click.option("--setup-timeout", type=float, default=60.0, callback=seconds_option,
              show_default=True,
              help="Seconds the boot to GUEST_FUZZ_INPUT may take.")
@click.option("--save-snapshot", "save_snapshot", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Save the input point's snapshot to FILE, for replaying "
              "inputs: pyvmm run --from-snapshot FILE --input INPUT.")
def fuzz_target(guest: str, input_file: str | None, cmdline: str, mem: str | None,
                timeout: float | None, setup_timeout: float, save_snapshot: str | None) -> int:
    """Run GUEST (built with --coverage, calling GUEST_FUZZ_INPUT) as a fuzz target.

    \b
    afl-fuzz -i seeds -o out -- pyvmm fuzz-target guest.elf
    (AFL_SKIP_BIN_CHECK=1: the target is a Python script, instrumented in the guest)
    """
    afl = under_afl()
    kw: dict[str, Any] = {}
    if mem is not None:
        kw["mem"] = memory_size(mem)
    # AFL's tools kill a target that runs too long themselves (afl-showmap runs one this way,
    # without the forkserver, with the map's id in the environment)
    by_afl = afl or SHM_ENV in os.environ
    with Target(guest, cmdline=cmdline, timeout=timeout if timeout or by_afl else 1.0,
                setup_timeout=setup_timeout, **kw) as target:
        if save_snapshot is not None:
            from pyvmm.snapshot import SnapshotError

            try:
                target.save_snapshot(save_snapshot)
            except SnapshotError as e:  # a file that cannot be written: output, not the guest
                raise OutputError(f"--save-snapshot: {e}") from None
        if afl:
            if target.map_size == 0:
                say(f"note: {guest} has no coverage map (build it with pyvmm guest build --coverage)")
            server = ForkServer(target.run, target.watch, target.map_size,
                                lambda: _read_input(input_file))
            return server.serve()
        r = target.run(_read_input(input_file))
        say(f"{r.status}: {r.reason} ({r.edges} map cells hit, {r.exec_ns / 1000:.0f} us)")
        publish_coverage(r.coverage)
    if r.status == "timeout":
        return ExitStatus.TIMEOUT
    if r.signal:
        sys.stdout.flush()
        signal.signal(r.signal, signal.SIG_DFL)
        os.kill(os.getpid(), r.signal)
        return ExitStatus.VMM_ERROR  # not reached
    return min(r.exit_code, 255)  # as pyvmm run gives a guest's debug-exit value
