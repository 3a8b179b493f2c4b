"""The guest SDK: build guests of your own against pyvmm's guest runtime.  (pyvmm's own
test guests, built with this SDK, are the repository's top-level ``guests/``.)

The runtime (``include/pyvmm/guest.h`` and the headers beside it, the sources in ``src/``,
the linker scripts in ``ld/``) ships with pyvmm, prebuilt as ``lib/libpyvmm-guest.a``::

    from pyvmm import guest
    guest.build(["my_guest.c"], "build/my_guest.elf")                  # ELF64, pyvmm's entry
    guest.build(["my_guest.c"], "build/my_guest.flat", multiboot=True)  # QEMU -kernel too

``pyvmm guest build`` and ``pyvmm guest flags`` are the same from the shell; the API of the
runtime itself is in docs/guests.md, which the wheel carries (``pyvmm guest docs`` prints it,
:func:`docs_path` finds it).
"""

from __future__ import annotations

from pathlib import Path

from pyvmm.errors import PyvmmError
from pyvmm.guest.toolchain import (
    DEFAULT_USER_ISA,
    INCLUDE,
    LD,
    SRC,
    GuestBuildError,
    build,
    cflags,
    ldflags,
    libs,
    runtime_library,
    user_cflags,
)

__all__ = ["INCLUDE", "LD", "SRC", "GuestBuildError", "build", "cflags", "docs_path", "flags",
           "ldflags", "libs", "runtime_library", "user_cflags"]

#: the SDK's reference as the wheel installs it (setup.py copies docs/guests.md here)
DOCS = INCLUDE.parent / "docs" / "guests.md"


def docs_path() -> Path:
    """Where the guest SDK's reference (docs/guests.md) is: the copy installed with the
    package, or in a source checkout (an editable install) the repository's own."""
    if DOCS.is_file():
        return DOCS
    checkout = INCLUDE.parents[2] / "docs" / "guests.md"
    if checkout.is_file():
        return checkout
    raise PyvmmError(f"the guest SDK's reference is missing from this installation ({DOCS}); "
                     "reinstall pyvmm")


def flags(multiboot: bool = False, user_isa: str = DEFAULT_USER_ISA) -> dict[str, str]:
    """``{"CFLAGS": ..., "USER_CFLAGS": ..., "LDFLAGS": ..., "LIBS": ...}`` as shell-quoted
    strings, for a Makefile of your own (``pyvmm guest flags`` prints them).  CFLAGS are
    for CPL0 code; USER_CFLAGS for files whose code runs at CPL3 (``GUEST_USER_CALL``)."""
    import shlex

    return {"CFLAGS": shlex.join(cflags()), "USER_CFLAGS": shlex.join(user_cflags(user_isa)),
            "LDFLAGS": shlex.join(ldflags(multiboot)),
            "LIBS": shlex.join(libs(runtime_library()))}
