"""``pyvmm`` command line: ``run`` a guest, ``info`` about the host's KVM.

Every failure ends as one line on stderr and a documented exit status (pyvmm/status.py),
never a Python traceback (``-v`` adds one for VMM bugs).  Guest output is flushed first.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from pyvmm import status
from pyvmm.devices.bus import BusError
from pyvmm.kvm.errors import KvmError
from pyvmm.loader.elf import GuestImageError
from pyvmm.machine import Machine, RunResult
from pyvmm.memory import GuestMemoryError
from pyvmm.x86.layout import parse_size


def _fail(code: int, message: str) -> None:
    sys.stdout.flush()
    click.echo(f"pyvmm: {message}", err=True)
    sys.exit(code)


def _size(ctx: click.Context, param: click.Parameter, value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return parse_size(value)
    except ValueError as e:
        raise click.BadParameter(str(e)) from None


def _write_serial(data: bytes) -> None:
    out = sys.stdout.buffer
    out.write(data)
    out.flush()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pyvmm-kvm")
def main() -> None:
    """pyvmm: run small guest kernels on /dev/kvm and see what KVM did."""


@main.command()
@click.argument("guest", type=click.Path(dir_okay=False))
@click.option("--mem", default=None, callback=_size,
              help="Guest RAM (K/M/G suffixes); 64M, or 128M for multiboot kernels as QEMU.")
@click.option("--cpus", default=1, show_default=True, type=click.IntRange(1, 64),
              help="vCPUs; APs wait for INIT/SIPI.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Stop the guest after SECONDS (exit status 124).")
@click.option("--append", "cmdline", default="", help="Guest command line (boot info, or "
              "the multiboot command line after the kernel's path).")
@click.option("--initrd", type=click.Path(dir_okay=False), default=None,
              help="Multiboot: pass FILE as the single module, as QEMU does.")
@click.option("--exit-code", "exit_code_mode", type=click.Choice(["raw", "qemu"]), default="raw",
              show_default=True, help="qemu: exit with (value << 1) | 1, like isa-debug-exit.")
@click.option("--irqchip", type=click.Choice(["kernel", "split", "none"]), default="kernel",
              show_default=True, help="In-kernel PIC+IOAPIC+LAPIC, LAPIC only, or none.")
@click.option("--pit", is_flag=True, help="Add KVM's in-kernel i8254 PIT (KVM_CREATE_PIT2).")
@click.option("--strict-io", is_flag=True, help="Unclaimed port/MMIO accesses are fatal.")
@click.option("--stats", is_flag=True, help="Print the exit histogram and KVM stats deltas.")
@click.option("--python-loop", is_flag=True, help="Handle every exit in Python (for comparison).")
@click.option("-v", "--verbose", is_flag=True, help="Describe the set-up; tracebacks for VMM bugs.")
def run(guest: str, mem: int | None, cpus: int, timeout: float | None, cmdline: str,
        initrd: str | None, exit_code_mode: str, irqchip: str, pit: bool, strict_io: bool,
        stats: bool, python_loop: bool, verbose: bool) -> None:
    """Boot GUEST (an ELF64 image) and stream its serial output.

    The exit status is the value the guest wrote to the debug-exit port (0xf4); see the
    README for the statuses pyvmm itself uses (120-125, 130).
    """
    machine = None
    try:
        kind = guest_format(guest)
        common = {"cpus": cpus, "strict_io": strict_io, "serial": _write_serial,
                  "irqchip": irqchip, "cmdline": cmdline}
        if mem is not None:
            common["mem"] = mem
        if kind == "multiboot":
            machine = Machine.from_multiboot(guest, initrd=initrd, pit=pit or irqchip == "kernel",
                                             **common)
        else:
            if initrd is not None:
                raise GuestImageError("--initrd is for multiboot kernels")
            machine = Machine.from_elf(guest, pit=pit, **common)
        if verbose:
            _describe(machine)
        result = machine.run(timeout=timeout, python_loop=python_loop)
    except GuestImageError as e:
        _fail(status.GUEST_IMAGE, str(e))
    except KvmError as e:
        _fail(status.KVM_UNAVAILABLE, str(e))
    except (GuestMemoryError, BusError, ValueError) as e:
        _fail(status.GUEST_IMAGE, str(e))
    except Exception as e:
        if verbose:
            traceback.print_exc()
        _fail(status.VMM_ERROR, f"internal error: {type(e).__name__}: {e} (run with -v for "
              "the traceback)")
    finally:
        if machine is not None:
            machine.close()
    sys.stdout.flush()
    if stats:
        _print_stats(result)
    sys.exit(_report(result, verbose, exit_code_mode))


def guest_format(path: str) -> str:
    """``elf64`` (pyvmm's own convention) or ``multiboot`` (an ELF32 or a.out-kludge kernel
    with a multiboot header); GuestImageError for anything else."""
    from pyvmm.loader.multiboot import is_multiboot

    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except FileNotFoundError:
        raise GuestImageError(f"{path}: no such file") from None
    except OSError as e:
        raise GuestImageError(f"{path}: {e.strerror}") from None
    if head[:4] == b"\x7fELF" and head[4:5] == b"\x02":
        return "elf64"
    if is_multiboot(head):
        return "multiboot"
    if head[:4] == b"\x7fELF":
        raise GuestImageError(f"{path}: ELF32 image without a multiboot header; pyvmm runs "
                              "ELF64 guests and multiboot kernels")
    raise GuestImageError(f"{path}: not an ELF file and no multiboot header (bad magic)")


def _report(result: RunResult, verbose: bool, exit_code_mode: str = "raw") -> int:
    if result.status == "exit":
        code = result.exit_code or 0
        if exit_code_mode == "qemu":
            return ((code << 1) | 1) & 0xFF  # what QEMU's isa-debug-exit makes of it
        if code > 255:
            click.echo(f"pyvmm: guest exit value {code:#x} does not fit an exit status; "
                       "exiting with 255", err=True)
            return 255
        return code
    if result.status == "crash" and result.crash is not None:
        click.echo(f"pyvmm: {result.crash.format()}", err=True)
    elif result.status == "error" and verbose:
        for o in result.outcomes:
            if "traceback" in o.details:
                click.echo(o.details["traceback"], err=True)
        click.echo(f"pyvmm: VMM error: {result.message}", err=True)
    elif result.status == "error":
        click.echo(f"pyvmm: VMM error: {result.message} (run with -v for details)", err=True)
    elif result.status not in ("shutdown", "done"):
        click.echo(f"pyvmm: {result.message}", err=True)
    return status.BY_RUN_STATUS.get(result.status, status.VMM_ERROR)


def _describe(m: Machine) -> None:
    p = m.boot_plan
    img = m.image
    assert img is not None
    e = click.echo
    e(f"pyvmm: {img.path}: entry {img.entry:#x}, {len(img.segments)} segment(s)", err=True)
    for s in img.segments:
        e(f"pyvmm:   segment {s.index}: {s.paddr:#x}-{s.end:#x} flags {s.flags:#x}", err=True)
    e(f"pyvmm: RAM {m.mem_size >> 20} MiB, {m.cpus} vCPU(s); VMM block {p.vmm_base:#x}+"
      f"{p.vmm_size:#x} (GDT, boot info {p.info_addr:#x}, page tables, CR3 {p.cr3:#x}), "
      f"stack {p.stack_base:#x}-{p.stack_top:#x}", err=True)


def _print_stats(r: RunResult) -> None:
    e = lambda s: click.echo(s, err=True)  # noqa: E731
    e(f"--- exits ({r.kvm_runs} KVM_RUN calls, {r.duration * 1000:.1f} ms)")
    for name, n in sorted(r.exit_counts.items(), key=lambda kv: -kv[1]):
        e(f"  {name:<16} {n}")
    if any(r.fast_hits.values()):
        e("--- answered in C (fast exit table)")
        for name, n in r.fast_hits.items():
            if n:
                e(f"  {name:<16} {n}")
    e("--- KVM stats that moved")
    for scope, moved in r.stats.items():
        for name, v in sorted(moved.items()):
            e(f"  {scope:<6} {name:<24} {v if isinstance(v, tuple) else f'{v:+d}'}")
    if r.unclaimed:
        e("--- unclaimed I/O (ignored)")
        for line in r.unclaimed:
            e(f"  {line}")


@main.command()
@click.option("--refresh", is_flag=True, help="Probe again instead of using the cache.")
@click.option("--json", "as_json", is_flag=True, help="Print the answer as JSON.")
def doctor(refresh: bool, as_json: bool) -> None:
    """Probe which features this KVM host supports (cached per host).

    Exits 121 when /dev/kvm cannot be used (nothing is probed or cached) and 125 when a
    probe could not run (that answer is shown but not cached).
    """
    from pyvmm.doctor import cache_path, host_features

    try:
        found = host_features(refresh=refresh)
    except KvmError as e:
        _fail(status.KVM_UNAVAILABLE, str(e))
    if as_json:
        click.echo(found.to_json())
    else:
        click.echo(f"host: {found.host}")
        group = ""
        for f in found.features.values():
            if f.group != group:
                group = f.group
                click.echo(f"{group}:")
            word = "ERROR" if f.works is None else "yes" if f.works else "NO"
            click.echo(f"  {f.name:<16} {word:<5} {f.detail}")
        if not found.errors:
            click.echo(f"(cached in {cache_path(found.key)}; --refresh to probe again)")
    if found.errors:
        names = ", ".join(f.name for f in found.errors)
        _fail(status.VMM_ERROR, f"{len(found.errors)} probe(s) could not run ({names}); "
              "nothing was cached")


@main.group()
def guest() -> None:
    """Build guests of your own against pyvmm's guest runtime (docs/guests.md)."""


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
@click.argument("sources", nargs=-1, required=True, type=click.Path(dir_okay=False))
def guest_build(output: str, multiboot: bool, includes: tuple[str, ...], defines: tuple[str, ...],
                extra_cflags: tuple[str, ...], extra_ldflags: tuple[str, ...],
                sources: tuple[str, ...]) -> None:
    """Compile and link SOURCES (C, GNU as .S) with the guest runtime into OUTPUT.

    The guest's entry is ``int main(struct boot_info *bi, const char *cmdline)``; its
    return value is the exit status.  Exits 1 with the compiler's output when it fails.
    """
    from pyvmm.guest.toolchain import GuestBuildError, build

    cflags = [*(f"-I{d}" for d in includes), *(f"-D{d}" for d in defines), *extra_cflags]
    try:
        build(sources, output, multiboot=multiboot, extra_cflags=cflags,
              extra_ldflags=extra_ldflags)
    except GuestBuildError as e:
        _fail(status.GUEST_BUILD, str(e))


@guest.command("flags")
@click.option("--multiboot", is_flag=True, help="Flags for a multiboot .flat kernel (link, "
              "then objcopy -O elf32-i386).")
@click.option("--cflags", "only", flag_value="CFLAGS", help="Print only the compiler flags.")
@click.option("--ldflags", "only", flag_value="LDFLAGS", help="Print only the linker flags.")
@click.option("--libs", "only", flag_value="LIBS", help="Print only the runtime library.")
def guest_flags(multiboot: bool, only: str | None) -> None:
    """Print CFLAGS=, LDFLAGS= and LIBS= lines for a Makefile of your own.

    Link with ``$(CC) $(CFLAGS) $(LDFLAGS) -o guest.elf your.o ... $(LIBS)``.
    """
    from pyvmm.guest import GuestBuildError, flags

    try:
        found = flags(multiboot)
    except GuestBuildError as e:
        _fail(status.GUEST_BUILD, str(e))
    for name, value in found.items():
        if only is None:
            click.echo(f"{name}={value}")
        elif only == name:
            click.echo(value)


@main.command()
def info() -> None:
    """KVM API version, vendor module, MMU kind and the capabilities pyvmm uses."""
    from pyvmm.hostinfo import USED_CAPS, detect
    from pyvmm.kvm.system import Kvm

    try:
        kvm = Kvm()
    except KvmError as e:
        _fail(status.KVM_UNAVAILABLE, str(e))
    with kvm:
        host = detect()
        click.echo(f"KVM API version: {kvm.get_api_version()}")
        click.echo(f"kernel:          {os.uname().release}")
        click.echo(f"module:          {host.module}")
        click.echo(f"MMU:             {host.describe()}")
        click.echo(f"vCPU mmap size:  {kvm.get_vcpu_mmap_size()}")
        click.echo("capabilities:")
        caps = kvm.capabilities
        for name in USED_CAPS:
            v = caps.get(name, 0)
            click.echo(f"  {name:<26} {v if v else 'no'}")


if __name__ == "__main__":
    main()
