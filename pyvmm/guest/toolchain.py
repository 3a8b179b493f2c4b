"""How pyvmm guests are compiled and linked: the one place the flags live.

pyvmm's own guests, the doctor's probe guest (built with the wheel) and users' guests all
go through :func:`build`.  This module needs only the standard library and
``pyvmm.errors`` (setup.py imports it from the source tree at wheel-build time, before the
extension exists).

Why the flags are what they are (see docs/guests.md):

- freestanding, no libc, static, not position-independent, linked by our linker script
  (``ld/guest.ld``: ELF64 at 1 MiB with the AP trampoline at 0x8000; ``ld/flat.ld``:
  everything at or above 1 MiB, for multiboot ``.flat`` kernels that QEMU loads as one blob);
- ``-mgeneral-regs-only`` and ``-fcf-protection=none``: no SSE/x87 and no ``endbr64``.  On
  kvm_pvm every CPL0 instruction goes through KVM's emulator, which knows neither;
- ``-mno-red-zone``: interrupt handlers run on the same stack;
- frame pointers and ``-g``: crash reports and gdb can walk the guest's stack.

User-mode sources (``user_sources``, ``--user-src``: code run at CPL3 through
``GUEST_USER_CALL``, see ``<pyvmm/user.h>``) are the exception: the CPU runs CPL3 code
itself, so they get the vector ISA (``-march=native`` unless another is named) instead of
``-mgeneral-regs-only``.  Everything else, the runtime included, keeps the CPL0 flags:
CPL0 code never touching vector registers is also why the runtime need not save them
around a user call.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

from pyvmm.errors import ExitStatus, PyvmmError

HERE = Path(__file__).resolve().parent
INCLUDE = HERE / "include"
SRC = HERE / "src"
LD = HERE / "ld"
LIB = HERE / "lib"
LIBRARY_NAME = "libpyvmm-guest.a"
RUNTIME_SOURCES = ("entry.S", "boot.c", "serial.c", "printf.c", "string.c", "smp.c", "ucall.c",
                   "idt.c", "isr.S", "apic.c", "pt.c", "report.c", "user.c", "user_entry.S", "fuzz.c")
#: the coverage hook ``--coverage`` links: outside the archive, so that only instrumented
#: guests carry its 64 KiB map, and never instrumented itself
COVERAGE_SOURCE = "fuzz_cov.c"
#: what ``--coverage`` adds to the guest's own sources (CPL0 and user mode alike)
COVERAGE_CFLAGS = ("-fsanitize-coverage=trace-pc",)

CFLAGS = (
    "-O2", "-g", "-std=gnu11", "-Wall", "-Wextra", "-ffreestanding", "-fno-builtin",
    "-nostdlib", "-fno-pic", "-fno-pie", "-mno-red-zone", "-mgeneral-regs-only",
    "-march=x86-64", "-fno-stack-protector", "-fcf-protection=none",
    "-fno-asynchronous-unwind-tables", "-fno-omit-frame-pointer",
)
#: the CPL0 flags that user-mode sources (CPL3, run natively) replace with the vector ISA
CPL0_ONLY = ("-mgeneral-regs-only", "-march=x86-64")
DEFAULT_USER_ISA = "native"
LDFLAGS = (
    "-static", "-no-pie", "-nostdlib", "-Wl,--build-id=none", "-Wl,-z,max-page-size=4096",
    "-Wl,-z,noexecstack", "-Wl,--no-warn-rwx-segments",
)


class GuestBuildError(PyvmmError):
    """The compiler, linker or objcopy failed, or is missing; the message says which and
    carries the tool's own output."""

    status = ExitStatus.GUEST_BUILD


def tool(name: str, env_var: str, default: str) -> list[str]:
    """The command for a tool (``$CC``/``$OBJCOPY`` may name another, with arguments)."""
    cmd = shlex.split(os.environ.get(env_var, default))
    if not cmd or shutil.which(cmd[0]) is None:
        raise GuestBuildError(f"{cmd[0] if cmd else env_var}: not found; building guests needs "
                              "gcc and binutils (Debian: apt-get install gcc binutils)")
    return cmd


def cflags(include: Path = INCLUDE) -> list[str]:
    """Compiler flags for guest sources, with ``#include <pyvmm/guest.h>`` resolvable."""
    return [*CFLAGS, f"-I{include}"]


def user_cflags(isa: str = DEFAULT_USER_ISA, include: Path = INCLUDE) -> list[str]:
    """Compiler flags for user-mode (CPL3) sources: the CPL0 flags with ``-march=ISA`` in
    place of ``-mgeneral-regs-only``; SSE/AVX allowed, as CPUID offers them at run time."""
    if not isa or isa.startswith("-") or any(c.isspace() for c in isa):
        raise GuestBuildError(f"--user-isa {isa!r}: not an ISA name (as gcc's -march= takes: "
                              "native, x86-64-v3, skylake, ...)")
    return [*(f for f in CFLAGS if f not in CPL0_ONLY), f"-march={isa}", f"-I{include}"]


def ldflags(multiboot: bool = False, ld_dir: Path = LD) -> list[str]:
    """Linker flags, our linker script included (``flat.ld`` for multiboot kernels)."""
    return [*LDFLAGS, "-T", str(ld_dir / ("flat.ld" if multiboot else "guest.ld"))]


def libs(library: Path) -> list[str]:
    """The runtime archive, whole: its entry points and the multiboot/PVH headers are not
    referenced by guest code, so the linker would otherwise leave them out."""
    return ["-Wl,--whole-archive", str(library), "-Wl,--no-whole-archive"]


def _run(cmd: Sequence[str], what: str, cwd: Path | None = None) -> None:
    p = subprocess.run(list(cmd), capture_output=True, text=True, cwd=cwd)
    if p.returncode != 0:
        out = (p.stdout + p.stderr).strip()
        raise GuestBuildError(f"{what} failed (exit {p.returncode}): {shlex.join(cmd)}\n{out}")


def build_runtime(out_dir: Path, src: Path = SRC, include: Path = INCLUDE) -> Path:
    """Compile the guest runtime into ``out_dir/libpyvmm-guest.a``; returns its path.
    Compiled in ``src`` by absolute path, so that its debug info (DW_AT_name, comp_dir)
    names the sources where they are: gdb shows them in guests linked with it."""
    cc = tool("cc", "CC", "gcc")
    ar = tool("ar", "AR", "ar")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="pyvmm-rt-") as tmp:
        objs = []
        for name in RUNTIME_SOURCES:
            obj = Path(tmp) / (Path(name).stem + ".o")
            _run([*cc, *cflags(include), "-c", "-o", str(obj), str(src.resolve() / name)],
                 f"compiling {name}", cwd=src)
            objs.append(str(obj))
        library = out_dir / LIBRARY_NAME
        partial = library.with_suffix(".a.tmp")
        partial.unlink(missing_ok=True)
        _run([*ar, "rcs", str(partial), *objs], "ar")
        partial.replace(library)  # atomic: a concurrent build never sees half an archive
    return library


def _cache_dirs() -> list[Path]:
    """Where a compiled runtime may go: the user's cache, else a per-user temporary one
    (a home that cannot be written must not stop guest builds)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [base / "pyvmm" / "guest-runtime",
            Path(tempfile.gettempdir()) / f"pyvmm-{os.getuid()}" / "guest-runtime"]


def _private(d: Path) -> bool:
    """``d`` (made 0700 if missing) is this user's and nobody else may write it: a
    library from a shared temporary folder is linked into guests."""
    d.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = d.lstat()
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o022


def runtime_library() -> Path:
    """The runtime archive built in place (a source checkout's editable install), or one
    compiled once into the user's cache from the installed sources, keyed by where they
    are, their contents and the flags (an edit or another installation rebuilds it).  A
    wheel ships the sources, not the archive: compiled where they are installed, the
    archive's debug info points at them (one compiled in the wheel's build folder would
    point into a folder deleted after the build, and gdb could not show the runtime)."""
    shipped = LIB / LIBRARY_NAME
    if shipped.exists():
        return shipped
    h = hashlib.sha256(" ".join([*CFLAGS, os.environ.get("CC", "gcc"), str(SRC)]).encode())
    for d in (SRC, INCLUDE / "pyvmm"):
        for f in sorted(d.iterdir()):
            h.update(f.name.encode() + f.read_bytes())
    failed: list[str] = []
    for i, cache in enumerate(_cache_dirs()):
        library = cache / h.hexdigest()[:16] / LIBRARY_NAME
        try:
            if i and not _private(cache.parent):
                failed.append(f"{cache.parent}: not a directory of this user's alone")
                continue
            if library.exists():
                return library
            return build_runtime(library.parent)
        except OSError as e:
            failed.append(f"{library.parent}: {e.strerror}")
    raise GuestBuildError(f"cannot write the guest runtime library ({'; '.join(failed)})")


def build(sources: Sequence[str | Path], output: str | Path, *, multiboot: bool = False,
          extra_cflags: Sequence[str] = (), extra_ldflags: Sequence[str] = (),
          library: Path | None = None, include: Path = INCLUDE, ld_dir: Path = LD,
          user_sources: Sequence[str | Path] = (), user_isa: str = DEFAULT_USER_ISA,
          coverage: bool = False, src: Path = SRC) -> Path:
    """Compile and link ``sources`` (C and GNU as ``.S``) with the guest runtime.

    ``user_sources`` hold code run at CPL3 (``GUEST_USER_CALL``): compiled with
    :func:`user_cflags` (``-march=user_isa``, vector registers allowed), then linked with
    the rest.  ``sources`` may be empty when ``user_sources`` are not.

    ELF64 guests follow pyvmm's entry convention; ``multiboot=True`` links the multiboot
    entry (everything at or above 1 MiB) and converts the result to ELF32 (EM_386), the
    form QEMU's ``-kernel`` and kvm-unit-tests' ``.flat`` files use.  ``coverage=True``
    instruments ``sources`` and ``user_sources`` (:data:`COVERAGE_CFLAGS`) and links the
    hook that records their edges into ``__pyvmm_cov_map`` (``<pyvmm/fuzz.h>``); the
    runtime stays uninstrumented.  Raises :class:`GuestBuildError` with the tool's output.
    """
    if not sources and not user_sources:
        raise GuestBuildError("no source files to build")
    for s in (*sources, *user_sources):
        if not Path(s).is_file():
            raise GuestBuildError(f"{s}: no such source file")
    ucflags = user_cflags(user_isa, include) if user_sources else []
    cov = list(COVERAGE_CFLAGS) if coverage else []
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    lib = library if library is not None else runtime_library()
    cc = tool("cc", "CC", "gcc")
    linked = out.with_name(out.name + ".64") if multiboot else out
    with tempfile.TemporaryDirectory(prefix="pyvmm-user-") as tmp:
        user_objs = []
        for i, s in enumerate(user_sources):
            obj = Path(tmp) / f"{i}-{Path(s).stem}.o"
            _run([*cc, *ucflags, *cov, *extra_cflags, "-c", "-o", str(obj), str(s)],
                 f"compiling {s} (user mode)")
            user_objs.append(str(obj))
        if coverage:  # the hook: CPL0 flags, not instrumented (it would call itself)
            obj = Path(tmp) / "pyvmm-fuzz-cov.o"
            _run([*cc, *cflags(include), "-c", "-o", str(obj), str(src.resolve() / COVERAGE_SOURCE)],
                 f"compiling {COVERAGE_SOURCE}")
            user_objs.append(str(obj))
        _run([*cc, *cflags(include), *cov, *extra_cflags, *ldflags(multiboot, ld_dir), *extra_ldflags,
              "-o", str(linked), *map(str, sources), *user_objs, *libs(lib)],
             f"building {out.name}")
    if multiboot:
        try:
            _run([*tool("objcopy", "OBJCOPY", "objcopy"), "-O", "elf32-i386", str(linked),
                  str(out)], "objcopy")
        finally:
            linked.unlink(missing_ok=True)
    return out
