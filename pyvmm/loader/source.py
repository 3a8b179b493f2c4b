"""Reading a guest's files (the image, an initrd): once, bounded, regular files only.

A guest file is read whole, so its size is checked against the limit (the guest RAM it
must fit in) *before* reading: ``--initrd /dev/zero`` or a 3 GiB image for a 64 MiB guest
is refused at once instead of filling the host's memory.  Anything that is not a regular
file (a FIFO, a pipe, a device) is refused too: it has no size to check, and a FIFO with no
writer would block forever.
"""

from __future__ import annotations

import errno
import os
import stat

from pyvmm.errors import GuestImageError, PyvmmError


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as it can be printed: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def read_file(path: str | os.PathLike[str], limit: int, *, what: str = "guest image",
              error: type[PyvmmError] = GuestImageError) -> bytes:
    """The whole of ``path``, at most ``limit`` bytes; ``error`` (one line a user can act
    on) when it is missing, unreadable, not a regular file or too big."""
    name = shown(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        reason = {errno.ENOENT: "no such file", errno.EACCES: "permission denied",
                  errno.EISDIR: f"is a directory, not a {what}"}.get(e.errno or 0, e.strerror)
        raise error(f"{name}: {reason}") from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{name}: is a directory, not a {what}")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{name}: not a regular file (a pipe, FIFO or device); pyvmm reads "
                        f"the {what} from a file: save it to one first")
        if st.st_size > limit:
            raise error(f"{name}: the {what} is {_size(st.st_size)}, more than the "
                        f"{_size(limit)} it must fit in; give the guest more memory (--mem)")
        chunks = []
        left = st.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break  # the file shrank while we read it: what is there is the file
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise error(f"{name}: {e.strerror}") from None
    finally:
        os.close(fd)
