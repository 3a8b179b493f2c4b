"""The files a suite writes besides stdout: ``-o DIR`` (each test's logs) and ``--junit
FILE``.

Both are checked before any test runs, so that a path that cannot be written is one line
and status 2 (a usage problem) instead of a failure in every test or a traceback at the
end.  The JUnit file is written by pytest into a private directory and copied to its place
at the end by :func:`deliver`: a write that fails then (``/dev/full``, a full disk) is one
line and status 119, as for stdout, and never pytest's internal error.
"""

from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path

from pyvmm.errors import ConfigError, OutputError
from pyvmm.loader.source import shown


def _why(e: OSError) -> str:
    return e.strerror or str(e)


def check_output_dir(directory: str, option: str = "-o") -> Path:
    """``directory``, created if missing; ConfigError (one line) when it is not a
    directory, cannot be created or cannot be written."""
    path = Path(directory)
    name = shown(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"{option} {name}: not a directory") from None
    except OSError as e:
        raise ConfigError(f"{option} {name}: cannot create the directory: {_why(e)}") from None
    if not path.is_dir():  # a symlink to a file passes mkdir(exist_ok=True)
        raise ConfigError(f"{option} {name}: not a directory")
    if not os.access(path, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {name}: the directory is not writable")
    return path


def check_file_target(target: str, option: str = "--junit") -> None:
    """ConfigError (one line) unless ``target`` can be written: an existing file (or
    device) that is writable, or a new name in a writable directory."""
    path = Path(target)
    name = shown(path)
    if path.is_dir():
        raise ConfigError(f"{option} {name}: is a directory, not a file")
    if path.exists():
        if not os.access(path, os.W_OK):
            raise ConfigError(f"{option} {name}: not writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {name}: no directory {shown(parent)} to write it in")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {name}: the directory {shown(parent)} is not writable")


def deliver(written: Path, target: str, what: str = "JUnit XML") -> None:
    """Copy ``written`` (pytest's file) to ``target``; OutputError (status 119, one line)
    when it cannot be written.  A FIFO with no reader is a failure, not a hang."""
    name = shown(target)
    try:
        data = written.read_bytes()
    except OSError as e:
        raise OutputError(f"cannot write {what} to {name}: pytest wrote none ({_why(e)})") from None
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC,
                     0o666)
    except OSError as e:
        why = "no process reads the FIFO" if e.errno == errno.ENXIO else _why(e)
        raise OutputError(f"cannot write {what} to {name}: {why}") from None
    try:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        fcntl.fcntl(fd, fcntl.F_SETFL, flags & ~os.O_NONBLOCK)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError as e:
        raise OutputError(f"cannot write {what} to {name}: {_why(e)}") from None
    finally:
        os.close(fd)
