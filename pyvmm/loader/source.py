"""Reading a guest's files (the image, an initrd): once, bounded, regular files only.

A guest file's size is checked against the limit (the guest RAM it must fit in) *before*
reading: ``--initrd /dev/zero`` or a 3 GiB image for a 64 MiB guest
is refused at once instead of filling the host's memory.  Anything that is not a regular
file (a FIFO, a pipe, a device) is refused too: it has no size to check, and a FIFO with no
writer would block forever.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat

from pyvmm.errors import GuestImageError, PyvmmError

#: what the loaders parse: the file's bytes, or (a big ELF file) an anonymous mapping of
#: its size holding only the parts they read
ImageBytes = bytes | mmap.mmap


def shown(path: str | os.PathLike[str]) -> str:
    """``path`` as it can be printed: bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def _size(n: int) -> str:
    for unit, div in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} bytes"


def open_checked(path: str | os.PathLike[str], limit: int, what: str,
          error: type[PyvmmError]) -> tuple[int, int]:
    """``(fd, size)`` of ``path`` opened for reading; ``error`` (one line a user can act on)
    when it is missing, unreadable, not a regular file or bigger than ``limit``."""
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
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def no_memory(name: str, size: int, what: str, error: type[PyvmmError]) -> PyvmmError:
    """The one line for a file there is not the memory to hold (a MemoryError would be
    status 125 with an empty message)."""
    return error(f"{name}: not enough memory to read the {_size(size)} {what} (is the "
                 "process's memory limited, ulimit -v?)")


def read_file(path: str | os.PathLike[str], limit: int, *, what: str = "guest image",
              error: type[PyvmmError] = GuestImageError) -> bytes:
    """The whole of ``path``, at most ``limit`` bytes; ``error`` (one line a user can act
    on) when it is missing, unreadable, not a regular file, too big, or there is not the
    memory to hold it (a MemoryError was status 125 with an empty message)."""
    name = shown(path)
    fd, size = open_checked(path, limit, what, error)
    try:
        # one read into one buffer (Linux reads a regular file whole, up to 2 GiB): chunks
        # joined at the end held the file twice
        data = os.read(fd, size)
        if len(data) == size or not data:
            return data
        chunks = [data]
        left = size - len(data)
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 30))
            if not chunk:
                break  # the file shrank while we read it: what is there is the file
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except MemoryError:
        raise no_memory(name, size, what, error) from None
    except OSError as e:
        raise error(f"{name}: {e.strerror}") from None
    finally:
        os.close(fd)
