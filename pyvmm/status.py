"""Process exit statuses of ``pyvmm run`` (also in the README).

A guest's own status comes from the debug-exit port and is passed through (low 8 bits);
guests should keep to 0-119 so that the VMM's statuses below stay distinguishable.
"""

from __future__ import annotations

GUEST_BUILD = 1  # pyvmm guest build: the compiler, linker or objcopy failed
USAGE = 2  # bad command-line arguments (click)
GUEST_IMAGE = 120  # the guest file cannot be loaded: not ELF, wrong kind, does not fit
KVM_UNAVAILABLE = 121  # /dev/kvm missing or unusable, or a KVM ioctl failed
GUEST_IO = 122  # --strict-io saw an unclaimed access, or the guest's I/O was malformed
GUEST_CRASH = 123  # triple fault, emulation failure, internal error, failed VM entry
TIMEOUT = 124  # --timeout passed (as timeout(1))
VMM_ERROR = 125  # a bug in pyvmm or a device handler (run with -v for the traceback)
GUEST_ASSERT = 126  # GUEST_ASSERT failed, or a guest exception had no handler
INTERRUPTED = 130  # Ctrl-C

BY_RUN_STATUS = {
    "shutdown": 0,
    "done": 0,
    "assert": GUEST_ASSERT,
    "timeout": TIMEOUT,
    "crash": GUEST_CRASH,
    "io-error": GUEST_IO,
    "interrupted": INTERRUPTED,
    "error": VMM_ERROR,
}
