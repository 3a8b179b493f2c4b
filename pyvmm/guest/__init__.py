"""The guest SDK: build guests of your own against pyvmm's guest runtime.

The runtime (``include/pyvmm/guest.h`` and the headers beside it, the sources in ``src/``,
the linker scripts in ``ld/``) ships with pyvmm, prebuilt as ``lib/libpyvmm-guest.a``::

    from pyvmm import guest
    guest.build(["my_guest.c"], "build/my_guest.elf")                  # ELF64, pyvmm's entry
    guest.build(["my_guest.c"], "build/my_guest.flat", multiboot=True)  # QEMU -kernel too

``pyvmm guest build`` and ``pyvmm guest flags`` are the same from the shell; the API of the
runtime itself is in docs/guests.md.
"""

from __future__ import annotations

from pyvmm.guest.toolchain import (
    INCLUDE,
    LD,
    SRC,
    GuestBuildError,
    build,
    cflags,
    ldflags,
    libs,
    runtime_library,
)

__all__ = ["INCLUDE", "LD", "SRC", "GuestBuildError", "build", "cflags", "flags", "ldflags",
           "libs", "runtime_library"]


def flags(multiboot: bool = False) -> dict[str, str]:
    """``{"CFLAGS": ..., "LDFLAGS": ..., "LIBS": ...}`` as shell-quoted strings, for a
    Makefile of your own (``pyvmm guest flags`` prints them)."""
    import shlex

    return {"CFLAGS": shlex.join(cflags()), "LDFLAGS": shlex.join(ldflags(multiboot)),
            "LIBS": shlex.join(libs(runtime_library()))}
