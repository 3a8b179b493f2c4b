"""pyvmm's one error model: every error it raises on purpose is a :class:`PyvmmError`
whose class says what went wrong and which process exit status ``pyvmm`` gives it.

The docstring of each class is the message's meaning; the message itself says what to do.
The statuses (README, "Exit statuses") are :class:`ExitStatus`; the CLI maps an error to
its status through ``error.status`` and needs no other ``except``.
"""

from __future__ import annotations

from enum import IntEnum


class ExitStatus(IntEnum):
    """Process exit statuses of ``pyvmm``.  A guest's own status (0-255 from the
    debug-exit port) is passed through; guests should keep to 0-118."""

    OK = 0
    #: ``pyvmm guest build``: the compiler, linker or objcopy failed
    GUEST_BUILD = 1
    #: bad command-line arguments or machine configuration
    USAGE = 2
    #: guest output could not be written (stdout closed, full or failing), or a --core,
    #: --trace or --save-at-sync file could not be written after a guest that exited 0
    OUTPUT = 119
    #: the guest file cannot be loaded
    GUEST_IMAGE = 120
    #: /dev/kvm missing or unusable, or a KVM ioctl failed
    KVM_UNAVAILABLE = 121
    #: --strict-io saw an unclaimed access, or the guest's I/O was malformed
    GUEST_IO = 122
    #: triple fault, emulation failure, internal error, failed VM entry
    GUEST_CRASH = 123
    #: --timeout passed (as timeout(1))
    TIMEOUT = 124
    #: a bug in pyvmm or a device handler (-v shows the traceback)
    VMM_ERROR = 125
    #: GUEST_ASSERT failed, or a guest exception had no handler
    GUEST_ASSERT = 126
    #: SIGHUP (128 + 1)
    HANGUP = 129
    #: Ctrl-C, SIGINT (128 + 2)
    INTERRUPTED = 130
    #: stdout is a closed pipe (128 + SIGPIPE), quietly, as other tools do
    BROKEN_PIPE = 141
    #: SIGTERM (128 + 15)
    TERMINATED = 143


class PyvmmError(Exception):
    """Something pyvmm cannot do; ``status`` is the exit status the CLI gives it."""

    status: ExitStatus = ExitStatus.VMM_ERROR


class ConfigError(PyvmmError, ValueError):
    """The machine was configured with values it cannot have (memory size, vCPU count,
    interrupt controller, command line, initrd)."""

    status = ExitStatus.USAGE


class GuestImageError(PyvmmError, ValueError):
    """The guest file cannot be loaded: missing, not a regular file, too big for RAM, not a
    format pyvmm boots, malformed, or it does not fit in guest RAM."""

    status = ExitStatus.GUEST_IMAGE


class GuestMemoryError(PyvmmError, ValueError):
    """A guest-physical range is not (wholly) backed by guest RAM."""

    status = ExitStatus.GUEST_IO


class GuestIoError(PyvmmError):
    """The guest did I/O pyvmm refuses: an unclaimed access under --strict-io, or a device
    used in a way this machine cannot serve."""

    status = ExitStatus.GUEST_IO


class GuestExitedError(PyvmmError):
    """``run()`` was called on a machine whose guest has already ended (exit, done,
    shutdown, crash or assertion): make a new Machine (or restore a snapshot)."""

    status = ExitStatus.VMM_ERROR


class MachineStateError(PyvmmError, RuntimeError):
    """A :class:`~pyvmm.Machine` method was called in a state it cannot serve: while the
    machine runs, before :meth:`~pyvmm.Machine.start`, or after it was closed.  A misuse of
    the Python API (the ``pyvmm`` command never makes one)."""

    status = ExitStatus.VMM_ERROR


class MachineClosedError(MachineStateError):
    """The :class:`~pyvmm.Machine` was closed (its fds and memory are gone)."""


class OutputError(PyvmmError):
    """Guest output could not be written to its destination."""

    status = ExitStatus.OUTPUT


class Interrupted(BaseException):
    """A signal asked pyvmm to stop (SIGTERM, SIGHUP, and SIGINT under the ``pyvmm``
    command; embedders get KeyboardInterrupt for SIGINT, which is handled alike).  A
    BaseException, as KeyboardInterrupt is: it unwinds through everything to the CLI."""

    def __init__(self, signum: int, name: str) -> None:
        super().__init__(signum, name)
        self.signum = signum
        self.name = name
