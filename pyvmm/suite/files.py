"""The files a suite reads: the config itself, and the host files a ``unittests.cfg``
``check = PATH=VALUE`` names.

They get the treatment guest files get (:mod:`pyvmm.loader.source`): regular files only
(a FIFO with no writer blocks for ever, ``/dev/zero`` never ends, a symlink to either is
the same), and a bounded size.  Unlike a guest image, the size ``stat`` gives is not
trusted to be the length: ``/proc`` files say 0 and ``/sys`` files 4096, and ``check``
reads such files, so at most ``limit + 1`` bytes are read whatever the size says.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from pyvmm.loader.source import shown

#: a config longer than this is not a config (kvm-unit-tests' x86 unittests.cfg: ~15 KiB)
MAX_CONFIG = 4 << 20
#: a ``check`` file holds one value (``Y``, ``1``): more than this is not such a file
MAX_CHECK = 64 << 10


class FileRefused(ValueError):
    """The file is not one a suite reads (not regular, too big); the message says which
    and why, in one line."""


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n >> 10} KiB" if n >= 1 << 10 else f"{n} bytes"


def read_bounded(path: Path, limit: int, what: str) -> bytes:
    """The bytes of ``path``: FileRefused when it is not a regular file or holds more than
    ``limit`` bytes; OSError (ENOENT, EACCES, ...) as ``open`` gives it."""
    name = shown(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise FileRefused(f"{name}: is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(f"{name}: not a regular file (a pipe, FIFO or device); "
                              f"a {what} must be a file")
        data = bytearray()
        while len(data) <= limit:
            chunk = os.read(fd, limit + 1 - len(data))
            if not chunk:
                break
            data += chunk
        if len(data) > limit:
            raise FileRefused(f"{name}: the {what} is more than the {_size(limit)} pyvmm reads")
        return bytes(data)
    finally:
        os.close(fd)


def read_config(path: Path) -> str:
    """The text of a suite config; SuiteConfigError, one line naming the file, when it
    cannot be read, is not a regular file, is too big or is not UTF-8."""
    from pyvmm.suite.model import SuiteConfigError

    try:
        return read_bounded(path, MAX_CONFIG, "suite config").decode("utf-8")
    except FileRefused as e:
        raise SuiteConfigError(str(e)) from None
    except OSError as e:
        raise SuiteConfigError(f"cannot read {shown(path)}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise SuiteConfigError(f"{shown(path)} is not a text file") from None


def read_check(path: Path) -> str:
    """The value a ``check`` file holds, blanks around it dropped ("" when it is missing or
    unreadable, as ``$(cat PATH)`` gives then); FileRefused when it is not a regular file
    or too big: no value to compare can be in such a file."""
    try:
        data = read_bounded(path, MAX_CHECK, "check file")
    except OSError:
        return ""
    return data.decode("utf-8", "replace").strip()
