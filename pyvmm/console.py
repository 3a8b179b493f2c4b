"""Where ``pyvmm``'s own output goes: guest output to stdout, messages to stderr.

Both are the user's business: stdout may be closed (``>&-``), a pipe whose reader left
(``| head -c 10``) or a full device (``>/dev/full``).  Guest output is written with
``os.write`` on fd 1 as it comes; the first failure is remembered (and the run stopped by
whoever listens), so the CLI can end with the conventional status: quietly 141 for a
broken pipe, one line and 119 otherwise.  Messages to stderr never raise: when even stderr
fails there is no one left to tell, and the exit status still says what happened.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

#: standard fds that were closed when pyvmm started (``>&-``); /dev/null now holds their
#: numbers, so that no file pyvmm opens later (``/dev/kvm``, a guest image) becomes "stdout"
CLOSED_FDS: set[int] = set()


def guard_standard_fds() -> None:
    """Put /dev/null on any of fds 0-2 that is closed, and remember which were."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            CLOSED_FDS.add(fd)


def say(message: str) -> None:
    """One line on stderr, ``pyvmm: `` first; failures to write are ignored."""
    data = f"pyvmm: {message}\n".encode("utf-8", "backslashreplace")
    try:  # noqa: SIM105 - not contextlib.suppress: an import the run path does without
        _write_all(2, data)
    except (OSError, ValueError):
        pass


def err(text: str) -> None:
    """Text on stderr as it is (reports, tables); failures to write are ignored."""
    try:  # noqa: SIM105 - as in say()
        _write_all(2, text.encode("utf-8", "backslashreplace"))
    except (OSError, ValueError):
        pass


def out(text: str) -> None:
    """Text on stdout (command output such as ``pyvmm info``).  BrokenPipeError when the
    reader left (the CLI ends quietly), OutputError for any other failure."""
    from pyvmm.errors import OutputError

    try:
        if 1 in CLOSED_FDS:
            raise OSError(errno.EBADF, os.strerror(errno.EBADF) + " (stdout is closed)")
        _write_all(1, text.encode("utf-8", "backslashreplace"))
    except BrokenPipeError:
        raise
    except OSError as e:
        raise OutputError(f"cannot write output: {e.strerror}") from None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class StdoutSink:
    """Guest output to fd 1.  ``on_error`` is called once, on the first failure (the CLI
    stops the guest then); :attr:`error` keeps it."""

    def __init__(self, on_error: Callable[[], None] | None = None) -> None:
        self.on_error = on_error
        self.error: OSError | None = None

    def __call__(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            if 1 in CLOSED_FDS:
                raise OSError(errno.EBADF, os.strerror(errno.EBADF) + " (stdout is closed)")
            _write_all(1, data)
        except OSError as e:
            self.error = e
            if self.on_error is not None:
                self.on_error()

    @property
    def broken_pipe(self) -> bool:
        return self.error is not None and self.error.errno == errno.EPIPE


def silence_stdout() -> None:
    """Point fd 1 at /dev/null, so that nothing at interpreter exit tries the broken pipe
    again (the Python documentation's advice for SIGPIPE-like exits)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    except OSError:
        pass
