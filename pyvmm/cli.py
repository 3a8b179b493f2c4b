"""``pyvmm`` command line: ``run`` a guest, ``suite`` (:mod:`pyvmm.suite.command`), ``doctor``,
``info``, ``guest build|flags|docs``.

Every command returns its exit status; errors are :class:`~pyvmm.errors.PyvmmError`s that
``pyvmm.entry`` turns into one line on stderr and their documented status (README, "Exit
statuses").  Guest output streams to stdout as it comes.
"""

from __future__ import annotations

import os

import click

from pyvmm.config import memory_size, seconds_option
from pyvmm.console import out, say
from pyvmm.errors import ConfigError, ExitStatus
from pyvmm.runcmd import run_guest


def _mem(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return memory_size(value)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


class LazyGroup(click.Group):
    """Commands whose modules load only when that command runs (``pyvmm run`` never
    imports the suite runner): name -> "module:attribute"."""

    LAZY = {"suite": "pyvmm.suite.command:suite", "fuzz-target": "pyvmm.fuzz.command:fuzz_target"}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.LAZY and name not in self.commands:
            import importlib

            module, attr = self.LAZY[name].split(":")
            cmd = getattr(importlib.import_module(module), attr)
            assert isinstance(cmd, click.Command)
            self.add_command(cmd, name)
        return super().get_command(ctx, name)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyvmm-kvm")
def main() -> None:
    """pyvmm: run small guest kernels on /dev/kvm and see what KVM did."""


@main.command()
@click.argument("guest", type=click.Path(dir_okay=False), required=False)
@click.option("--mem", default=None, callback=_mem, help="Guest RAM: K/M/G/T suffixes, fractions "
              "that come to whole bytes (0.5G), a bare number is MiB (as QEMU's -m); 64M, or "
              "128M for multiboot kernels.")
@click.option("--cpus", default=1, show_default=True, type=click.IntRange(1, 64),
              help="vCPUs; APs wait for INIT/SIPI.")
@click.option("--timeout", type=float, default=None, callback=seconds_option,
              help="Stop the guest after SECONDS (exit status 124).")
@click.option("--append", "cmdline", default="", help="Guest command line (boot info, or "
              "the multiboot command line after the kernel's path).")
@click.option("--initrd", type=click.Path(dir_okay=False), default=None,
              help="Multiboot: pass FILE as the single module, as QEMU does.")
@click.option("--format", "fmt", type=click.Choice(["elf64", "multiboot"]), default=None,
              help="Boot GUEST as this format instead of detecting it.")
@click.option("--exit-code", "exit_code_mode", type=click.Choice(["raw", "qemu"]), default="raw",
              show_default=True, help="qemu: exit with (value << 1) | 1, like isa-debug-exit.")
@click.option("--irqchip", type=click.Choice(["kernel", "split", "none"]), default="kernel",
              show_default=True, help="In-kernel PIC+IOAPIC+LAPIC, LAPIC only, or none.")
@click.option("--pit/--no-pit", default=None, help="With or without KVM's in-kernel i8254 PIT "
              "(KVM_CREATE_PIT2); multiboot kernels have one by default, as QEMU's "
              "-machine pit=on.")
@click.option("--cpu-features", default="", metavar="+FLAG,-FLAG,...",
              help="Add or hide CPUID features by QEMU's names (+x2apic,-pcid,...), as "
              "-cpu MODEL,+flag,-flag; a feature KVM cannot give is refused.")
@click.option("--strict-io", is_flag=True, help="Unclaimed port/MMIO accesses are fatal.")
@click.option("--stats", is_flag=True, help="Print the exit histogram and KVM stats deltas.")
@click.option("--python-loop", is_flag=True, help="Handle every exit in Python (for comparison).")
@click.option("--gdb", "gdb", metavar="[HOST:]PORT", default=None,
              help="Serve gdb's remote protocol; the guest waits for gdb before its first "
              "instruction (target remote :PORT).")
@click.option("-s", "gdb_default", is_flag=True, help="Shorthand for --gdb localhost:1234, as QEMU.")
@click.option("--gdb-no-wait", is_flag=True, help="With --gdb: start the guest at once; gdb "
              "may attach later.")
@click.option("--gdb-allow-remote", is_flag=True, help="Let --gdb listen on an address that "
              "is not loopback (anyone who reaches it controls the guest).")
@click.option("--core", "core", type=click.Path(dir_okay=False), default=None,
              help="If the guest crashes, fails an assertion or times out, write an ELF core "
              "of it to FILE (gdb GUEST FILE).")
@click.option("--trace", "trace", type=click.Path(dir_okay=False), default=None,
              help="Record every exit and guest event; write them to FILE as Chrome/Perfetto "
              "trace-event JSON (ui.perfetto.dev opens it).")
@click.option("--kvm-trace", "kvm_trace", is_flag=False, flag_value="", default=None,
              metavar="[EVENTS]", help="Record KVM's own tracepoints for this run only (root, "
              "tracefs): EVENTS as tracefs spells them, comma-separated (kvm:kvm_pio, "
              "kvmmmu:*, 'kvm_pio if port == 0x3f8'); none: a cheap default set (README, "
              "'What KVM did').  With --trace they join the JSON on the vCPU tracks.")
@click.option("--kvm-stacks", "kvm_stacks", is_flag=False, flag_value="", default=None,
              metavar="[EVENTS]", help="The kernel stack of every KVM event (or of EVENTS "
              "only); implies --kvm-trace.")
@click.option("--kvm-stat", "kvm_stat", is_flag=True, help="Print KVM's events by GUEST_SYNC "
              "stage, their most frequent kernel stacks and exit reasons (implies --kvm-trace).")
@click.option("--save-at-sync", "save_at", nargs=2, type=(click.IntRange(0), click.Path(dir_okay=False)),
              default=None, metavar="STAGE FILE", help="At the guest's first GUEST_SYNC of STAGE, "
              "save a snapshot of the whole machine to FILE, then run on.")
@click.option("--from-snapshot", "from_snapshot", type=click.Path(dir_okay=False), default=None,
              metavar="FILE", help="Go on from a snapshot FILE (RAM mapped copy-on-write) "
              "instead of booting GUEST.")
@click.option("--input", "input_file", type=click.Path(dir_okay=False, exists=True, readable=True),
              default=None,
              metavar="FILE", help="With --from-snapshot of a fuzz target's input point "
              "(pyvmm fuzz-target --save-snapshot): the guest's GUEST_FUZZ_INPUT gets FILE.")
@click.option("-v", "--verbose", is_flag=True,
              help="Describe the set-up, show guest events as they happen, tracebacks for VMM bugs.")
def run(guest: str, mem: int | None, cpus: int, timeout: float | None, cmdline: str,
        initrd: str | None, fmt: str | None, exit_code_mode: str, irqchip: str, pit: bool | None,
        cpu_features: str, strict_io: bool, stats: bool, python_loop: bool, gdb: str | None,
        gdb_default: bool, gdb_no_wait: bool, gdb_allow_remote: bool, core: str | None,
        trace: str | None, kvm_trace: str | None, kvm_stacks: str | None, kvm_stat: bool,
        save_at: tuple[int, str] | None, from_snapshot: str | None, input_file: str | None,
        verbose: bool) -> int:
    """Boot GUEST (an ELF64 image or a multiboot kernel) and stream its serial output.

    The exit status is the value the guest wrote to the debug-exit port (0xf4); see the
    README for the statuses pyvmm itself uses (119-126, 129-143).
    """
    if gdb_default and gdb is None:
        gdb = "localhost:1234"
    if (gdb_no_wait or gdb_allow_remote) and gdb is None:
        raise click.UsageError("--gdb-no-wait and --gdb-allow-remote go with --gdb or -s")
    if trace is not None and python_loop:
        raise click.UsageError("--trace records the C run loop's exits; drop --python-loop")
    # an optional value takes the next word: `--kvm-trace guest.elf` meant the guest
    if guest is None and from_snapshot is None:
        for value in (kvm_trace, kvm_stacks):
            if value and os.path.isfile(value):
                guest = value
                kvm_trace = "" if kvm_trace == value else kvm_trace
                kvm_stacks = "" if kvm_stacks == value else kvm_stacks
    if (guest is None) == (from_snapshot is None):
        raise click.UsageError("give a GUEST to boot or --from-snapshot FILE (one of them)")
    if input_file is not None and from_snapshot is None:
        raise click.UsageError("--input goes with --from-snapshot (a fuzz target's input point)")
    if from_snapshot is not None:
        ctx = click.get_current_context()
        options = {"mem": "--mem", "cpus": "--cpus", "cmdline": "--append", "initrd": "--initrd",
                   "fmt": "--format", "irqchip": "--irqchip", "pit": "--pit/--no-pit",
                   "cpu_features": "--cpu-features", "save_at": "--save-at-sync"}
        shape = [opt for name, opt in options.items()
                 if ctx.get_parameter_source(name) == click.core.ParameterSource.COMMANDLINE]
        if shape:
            raise click.UsageError(f"--from-snapshot takes the machine from the snapshot; drop "
                                   f"{', '.join(shape)}")
    # by name: five of these are adjacent flags a positional slip would swap unseen
    return run_guest(guest=guest, mem=mem, cpus=cpus, timeout=timeout, cmdline=cmdline,
                     initrd=initrd, fmt=fmt, exit_code_mode=exit_code_mode, irqchip=irqchip,
                     pit=pit, cpu_features=cpu_features, strict_io=strict_io, stats=stats,
                     python_loop=python_loop, gdb=gdb, gdb_no_wait=gdb_no_wait,
                     gdb_allow_remote=gdb_allow_remote, core=core, trace=trace,
                     kvm_trace=kvm_trace, kvm_stacks=kvm_stacks, kvm_stat=kvm_stat,
                     save_at=save_at, from_snapshot=from_snapshot, verbose=verbose,
                     input_file=input_file)


@main.command()
@click.option("--refresh", is_flag=True, help="Probe again instead of using the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def doctor(refresh: bool, as_json: bool) -> int:
    """Probe which features this KVM host supports (cached per host).

    Exits 121 when /dev/kvm cannot be used (nothing is probed or cached) and 125 when a
    probe could not run (that answer is shown but not cached).
    """
    from pyvmm.doctor import cache_path, host_features

    found = host_features(refresh=refresh)
    if as_json:
        out(found.to_json() + "\n")
    else:
        lines = [f"host: {found.host}"]
        group = ""
        for f in found.features.values():
            if f.group != group:
                group = f.group
                lines.append(f"{group}:")
            word = "ERROR" if f.works is None else "yes" if f.works else "NO"
            lines.append(f"  {f.name:<16} {word:<5} {f.detail}")
        if found.cache_error is not None:
            lines.append(f"(could not be cached in {cache_path(found.key)}: "
                         f"{found.cache_error}; the next run probes again)")
        elif not found.errors:
            lines.append(f"(cached in {cache_path(found.key)}; --refresh to probe again)")
        out("\n".join(lines) + "\n")
    if found.errors:
        names = ", ".join(f.name for f in found.errors)
        say(f"{len(found.errors)} probe(s) could not run ({names}); nothing was cached")
        return ExitStatus.VMM_ERROR
    return ExitStatus.OK


@main.group()
def guest() -> None:
    """Build guests of your own against pyvmm's guest runtime (its reference: pyvmm guest docs)."""


@guest.command("build")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False),
              help="The guest file to write (ELF64, or ELF32 with --multiboot).")
@click.option("--multiboot", is_flag=True,
              help="A multiboot .flat kernel (ELF32, loaded at or above 1 MiB), as "
              "kvm-unit-tests build them; QEMU's -kernel boots it too.")
@click.option("-I", "includes", multiple=True, metavar="DIR", help="Add an include directory.")
@click.option("-D", "defines", multiple=True, metavar="NAME[=VALUE]", help="Define a macro.")
@click.option("--cflag", "extra_cflags", multiple=True, help="Another compiler flag.")
@click.option("--ldflag", "extra_ldflags", multiple=True, help="Another linker flag.")
@click.option("--user-src", "user_sources", multiple=True, type=click.Path(dir_okay=False),
              metavar="FILE", help="A source whose code runs at CPL3 (GUEST_USER_CALL): "
              "built with the vector ISA instead of -mgeneral-regs-only (repeatable).")
@click.option("--user-isa", default="native", show_default=True, metavar="ISA",
              help="gcc's -march= for the --user-src files.")
@click.option("--coverage", is_flag=True, help="Instrument SOURCES and --user-src files for "
              "fuzzing (-fsanitize-coverage=trace-pc into an AFL-style edge map; "
              "docs/fuzzing.md).")
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
def guest_build(output: str, multiboot: bool, includes: tuple[str, ...], defines: tuple[str, ...],
                extra_cflags: tuple[str, ...], extra_ldflags: tuple[str, ...],
                user_sources: tuple[str, ...], user_isa: str, coverage: bool,
                sources: tuple[str, ...]) -> int:
    """Compile and link SOURCES (C, GNU as .S) with the guest runtime into OUTPUT.

    The guest's entry is ``int main(struct boot_info *bi, const char *cmdline)``; its
    return value is the exit status.  SOURCES get the CPL0 flags (no SSE: kvm_pvm emulates
    CPL0 code); --user-src files, for code run at CPL3, the host's vector ISA.  Exits 1
    with the compiler's output when it fails.
    """
    from pyvmm.guest.toolchain import build

    cflags = [*(f"-I{d}" for d in includes), *(f"-D{d}" for d in defines), *extra_cflags]
    build(sources, output, multiboot=multiboot, extra_cflags=cflags, extra_ldflags=extra_ldflags,
          user_sources=user_sources, user_isa=user_isa, coverage=coverage)
    return ExitStatus.OK


@guest.command("flags")
@click.option("--multiboot", is_flag=True, help="Flags for a multiboot .flat kernel (link, "
              "then objcopy -O elf32-i386).")
@click.option("--cflags", "only", flag_value="CFLAGS", help="Print only the compiler flags.")
@click.option("--ldflags", "only", flag_value="LDFLAGS", help="Print only the linker flags.")
@click.option("--libs", "only", flag_value="LIBS", help="Print only the runtime library.")
@click.option("--user-cflags", "only", flag_value="USER_CFLAGS",
              help="Print only the compiler flags for user-mode (CPL3) files.")
@click.option("--user-isa", default="native", show_default=True, metavar="ISA",
              help="gcc's -march= in USER_CFLAGS.")
def guest_flags(multiboot: bool, only: str | None, user_isa: str) -> int:
    """Print CFLAGS=, USER_CFLAGS=, LDFLAGS= and LIBS= lines for a Makefile of your own.

    Compile CPL0 code with $(CFLAGS), code run at CPL3 (GUEST_USER_CALL) with
    $(USER_CFLAGS); link with ``$(CC) $(CFLAGS) $(LDFLAGS) -o guest.elf your.o ... $(LIBS)``.
    """
    from pyvmm.guest import flags

    for name, value in flags(multiboot, user_isa).items():
        if only is None:
            out(f"{name}={value}\n")
        elif only == name:
            out(value + "\n")
    return ExitStatus.OK


@guest.command("docs")
@click.option("--path", "path_only", is_flag=True, help="Print only where the file is.")
def guest_docs(path_only: bool) -> int:
    """Print the guest SDK's reference (docs/guests.md, installed with pyvmm): the runtime's
    API, every macro and helper, with examples."""
    from pyvmm.guest import docs_path

    path = docs_path()
    out(f"{path}\n" if path_only else path.read_text(encoding="utf-8"))
    return ExitStatus.OK


@main.command()
def info() -> int:
    """KVM API version, vendor module, MMU kind and the capabilities pyvmm uses."""
    from pyvmm.hostinfo import USED_CAPS, detect
    from pyvmm.kvm.system import Kvm

    with Kvm() as kvm:
        host = detect()
        caps = kvm.capabilities
        lines = [f"KVM API version: {kvm.get_api_version()}", f"kernel:          {os.uname().release}",
                 f"module:          {host.module}", f"MMU:             {host.describe()}",
                 f"vCPU mmap size:  {kvm.vcpu_mmap_size}", "capabilities:"]
        lines += [f"  {name:<26} {caps.get(name, 0) or 'no'}" for name in USED_CAPS]
    out("\n".join(lines) + "\n")
    return ExitStatus.OK

