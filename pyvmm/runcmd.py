"""What ``pyvmm run`` does once its command line is read: build the machine, run it,
report, and the exit status.

Free of click, so that ``pyvmm.entry`` can run a plain ``pyvmm run GUEST`` (read by
:mod:`pyvmm.runargs`) without importing it; ``pyvmm.cli``'s ``run`` checks what only a
command line can get wrong (options that do not go together) and calls :func:`run_guest`
too.  Every failure is a :class:`~pyvmm.errors.PyvmmError` or the status returned.
"""

from __future__ import annotations

import os

from pyvmm.artefacts import Artefacts, check_output_path
from pyvmm.console import StdoutSink, err, say
from pyvmm.errors import ExitStatus
from pyvmm.machine import Machine
from pyvmm.vstate.history import HistoryLimits
from pyvmm.vstate.result import RunResult, RunStatus, exit_status

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from pyvmm.kvmtrace import KvmTrace

#: the run outcomes --core writes a core for
CORE_STATUSES = (RunStatus.CRASH, RunStatus.ASSERT, RunStatus.TIMEOUT)
#: the CLI streams guest output and keeps only what it reports
CLI_HISTORY = HistoryLimits(serial=0, events=16)


def run_guest(guest: str | None, mem: int | None, cpus: int, timeout: float | None,
              cmdline: str, initrd: str | None, fmt: str | None, exit_code_mode: str,
              irqchip: str, pit: bool | None, cpu_features: str, strict_io: bool, stats: bool,
              python_loop: bool, gdb: str | None, gdb_no_wait: bool, gdb_allow_remote: bool,
              core: str | None, trace: str | None, kvm_trace: str | None,
              kvm_stacks: str | None, kvm_stat: bool, save_at: tuple[int, str] | None,
              from_snapshot: str | None, verbose: bool, input_file: str | None = None) -> int:
    """``pyvmm run`` with its parameters read and checked against each other (exactly one
    of ``guest`` and ``from_snapshot``; ``input_file`` only with ``from_snapshot``; ``gdb``
    with -s already applied): the exit status."""
    machine: Machine | None = None
    sink = StdoutSink(lambda: machine.stop() if machine is not None else None)
    kw: dict[str, object] = {"cpus": cpus, "strict_io": strict_io, "serial": sink,
                             "irqchip": irqchip, "history": CLI_HISTORY}
    if mem is not None:
        kw["mem"] = mem
    if pit is not None:
        kw["pit"] = pit
    if cpu_features:
        kw["cpu_features"] = cpu_features
        _note_cpuid_honoured(cpu_features)
    # a typo in an output path must not cost the run: found now, not after the guest ran
    for path, option in ((core, "--core"), (trace, "--trace")):
        if path is not None:
            check_output_path(path, option)
    if save_at is not None:  # saved by rename: a device node there would be replaced
        check_output_path(save_at[1], "--save-at-sync", regular_only=True)
    artefacts = Artefacts()
    kt = None
    if kvm_trace is not None or kvm_stacks is not None or kvm_stat:
        from pyvmm.kvmtrace import KvmTrace

        # started before the VM exists (its creation is KVM's work too); a host that
        # cannot trace is one line and status 2 before anything runs
        kt = KvmTrace(kvm_trace or None, stacks=True if kvm_stacks == "" else (kvm_stacks or False))
        kt.start()
    try:
        if from_snapshot is not None:
            machine = Machine.from_snapshot(from_snapshot, serial=sink, history=CLI_HISTORY,
                                            strict_io=strict_io)
            guest = machine.image.path if machine.image is not None else from_snapshot
            if input_file is not None:  # a fuzz target's input point: this input, as AFL gave it
                from pyvmm.fuzz.replay import prepare
                from pyvmm.fuzz.target import MAX_INPUT

                with open(input_file, "rb") as f:  # what a buffer can take, not the whole file
                    prepare(machine, f.read(MAX_INPUT))
        else:
            assert guest is not None
            machine = Machine.from_file(guest, fmt=fmt, cmdline=cmdline, initrd=initrd, **kw)
        if kt is not None:
            kt.attach(machine)
        if verbose:
            if from_snapshot is None:
                _describe(machine)
            machine.on_event(lambda ev: say(f"vcpu{ev.vcpu}: {ev.describe()}"))
        if trace is not None:
            machine.enable_trace()
        if gdb is not None:
            result = _serve_gdb(machine, gdb, gdb_no_wait, gdb_allow_remote, timeout, verbose)
        elif save_at is not None:
            result = _run_and_save(machine, save_at[0], save_at[1], timeout, python_loop, artefacts)
        else:
            # KVM statistics only when shown: two snapshots of every stats fd otherwise wasted
            result = machine.run(timeout=timeout, python_loop=python_loop, stats=stats)
        if core is not None and result.status in CORE_STATUSES:
            m, status = machine, result.status
            if artefacts.write("core", core, lambda: m.write_core(core, status)):
                say(f"core written to {core} (gdb {guest} {core})")
        if kt is not None:
            kt.note_threads()
            machine.close()  # memslots and the VM go while KVM's events are still recorded
            kt.stop()
        if trace is not None and result.trace is not None:
            tr, label = result.trace, f"pyvmm {os.path.basename(guest)}"
            if kt is not None:
                from pyvmm.kvmtrace.timeline import KvmTimeline

                tr.sources.append(KvmTimeline(kt))
            artefacts.write("trace", trace, lambda: tr.write_json(trace, name=label))
    finally:
        if machine is not None:
            machine.close()
        if kt is not None:
            kt.stop()
    if sink.error is not None:
        code = _output_failed(sink)
    else:
        if stats:
            _print_stats(result)
        if kt is not None:
            _report_kvm_trace(kt, kvm_stat)
        code = _report(result, verbose, exit_code_mode)
    # the guest's outcome first; an artefact that could not be written after it, and the
    # guest's status stands (a clean exit becomes 119: what was asked for is missing)
    for line in artefacts.failures:
        say(line)
    if artefacts.failures and code == ExitStatus.OK:
        return ExitStatus.OUTPUT
    return code



def _report_kvm_trace(kt: KvmTrace, summary: bool) -> None:
    """The --kvm-stat summary, and always a word when the kernel lost events."""
    if summary:
        from pyvmm.kvmtrace.stat import summary as kvm_summary

        err(kvm_summary(kt))
    if kt.errors:
        say(f"kvm-trace: some CPUs' KVM events could not be read ({'; '.join(kt.errors)})")
    if kt.lost:
        say(f"kvm-trace: the kernel lost {kt.lost} KVM events (its buffer filled before pyvmm "
            "read it); trace fewer events or fewer stacks")


def _run_and_save(machine: Machine, stage: int, path: str, timeout: float | None,
                  python_loop: bool, artefacts: Artefacts) -> RunResult:
    """Run to the first GUEST_SYNC of ``stage``, save a snapshot there, run on.  The
    snapshot is taken with every vCPU stopped, right after the sync's exit completes; a
    snapshot that cannot be written is said after the guest's outcome, and the guest runs
    on all the same."""
    result = machine.run_to_sync(stage, timeout, python_loop=python_loop)
    hit = bool(result.syncs(stage))
    if result.status != RunStatus.STOPPED or not hit:
        if not hit and result.status not in (RunStatus.INTERRUPTED,):
            say(f"note: the guest never reached GUEST_SYNC {stage}; no snapshot was saved")
        return result
    # streamed (no second copy of guest RAM); a failed write is said after the outcome
    if artefacts.write("snapshot", path, lambda: machine.save_snapshot(path)):
        say(f"snapshot saved to {path} at GUEST_SYNC {stage}")
    left = None if timeout is None else max(0.001, timeout - result.duration)
    return machine.run(timeout=left, python_loop=python_loop)


def _serve_gdb(machine: Machine, address: str, no_wait: bool, allow_remote: bool,
               timeout: float | None, verbose: bool) -> RunResult:
    """Serve gdb until the guest ends (or gdb kills it); what the host's debug registers
    can do decides which breakpoints and watchpoints are offered (pyvmm doctor)."""
    from pyvmm.debug.gdbstub import GdbServer, is_loopback, parse_address
    from pyvmm.doctor import host_debug

    host, port = parse_address(address)
    machine.host_debug = host_debug(say)
    server = GdbServer(machine.debug, host, port, allow_remote=allow_remote,
                       log=say if verbose else lambda line: None)
    where = f"{server.address[0]}:{server.address[1]}"
    if allow_remote and not is_loopback(host):
        say(f"warning: the gdb stub listens on {where}: anyone who reaches it controls the guest")
    say(f"gdb stub on {where}" + ("" if no_wait else "; waiting for gdb (target remote "
                                  f"{where}) before the guest's first instruction"))
    return server.serve(wait=not no_wait, timeout=timeout)


def _note_cpuid_honoured(spec: str) -> None:
    """Say so when the host is known (``pyvmm doctor``'s set-cpuid probe) not to show the
    guest some of the CPUID changes asked for: the run goes on, but not as asked."""
    from pyvmm.doctor import cpuid_ignored

    ignored = cpuid_ignored(spec)
    if ignored:
        say(f"note: this host's KVM ignores KVM_SET_CPUID2 for {', '.join(ignored)} (pyvmm "
            "doctor: set-cpuid); the guest sees the host's value")


def _output_failed(sink: StdoutSink) -> int:
    from pyvmm.console import silence_stdout

    if sink.broken_pipe:
        silence_stdout()
        return ExitStatus.BROKEN_PIPE
    assert sink.error is not None
    say(f"cannot write guest output: {sink.error.strerror}; the guest was stopped")
    return ExitStatus.OUTPUT


def _report(result: RunResult, verbose: bool, exit_code_mode: str = "raw") -> int:
    if result.status == RunStatus.EXIT:
        if exit_code_mode == "raw" and (result.exit_code or 0) > 255:
            say(f"guest exit value {result.exit_code:#x} does not fit an exit status; exiting with 255")
    elif result.status == RunStatus.CRASH and result.crash is not None:
        say(result.crash.format())
    elif result.status == RunStatus.ERROR:
        if verbose:
            for o in result.outcomes:
                if "traceback" in o.details:
                    err(o.details["traceback"])
        say(f"VMM error: {result.message}" + ("" if verbose else " (run with -v for details)"))
    elif result.status not in (RunStatus.SHUTDOWN, RunStatus.DONE):
        say(result.message)
    return exit_status(result, qemu=exit_code_mode == "qemu")


def _describe(m: Machine) -> None:
    assert m.plan is not None
    for line in m.plan.describe():
        say(line)
    say(f"RAM {m.mem_size >> 20} MiB, {m.cpus} vCPU(s), irqchip {m.irqchip}"
        + (", PC platform" if m.pc is not None else ""))


def _print_stats(r: RunResult) -> None:
    lines = [f"--- exits ({r.kvm_runs} KVM_RUN calls, {r.duration * 1000:.1f} ms)"]
    lines += [f"  {name:<16} {n}" for name, n in sorted(r.exit_counts.items(), key=lambda kv: -kv[1])]
    if any(r.fast_hits.values()):
        lines.append("--- answered in C (fast exit table)")
        lines += [f"  {name:<16} {n}" for name, n in r.fast_hits.items() if n]
    lines.append("--- KVM stats that moved")
    for scope, moved in r.stats.items():
        lines += [f"  {scope:<6} {name:<24} {v:+d}" for name, v in sorted(moved.items())]
    for scope, hists in r.histograms.items():
        lines += [f"  {scope:<6} {name:<24} {v}" for name, v in sorted(hists.items())]
    if r.unclaimed:
        lines.append("--- unclaimed I/O (ignored)")
        lines += [f"  {line}" for line in r.unclaimed]
    err("\n".join(lines) + "\n")
