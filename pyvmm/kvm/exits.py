"""Names of the KVM_EXIT_* reasons, taken from the header through the native module."""

from __future__ import annotations

from pyvmm._native import lib

EXIT_NAMES: dict[int, str] = {
    getattr(lib, name): name[len("KVM_EXIT_"):]
    for name in dir(lib)
    if name.startswith("KVM_EXIT_") and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
}


def exit_name(reason: int) -> str:
    """``KVM_EXIT_IO`` -> ``"IO"``; unknown numbers come back as ``"EXIT_<n>"``."""
    return EXIT_NAMES.get(reason, f"EXIT_{reason}")
