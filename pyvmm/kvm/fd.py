"""Ownership of one KVM file descriptor: ``close()``, context manager, no double close."""

from __future__ import annotations

import contextlib
import errno
import os
from typing import Self

from pyvmm.kvm.errors import KvmError, check
from pyvmm.kvm.native import ffi, lib


class FdObject:
    """Base for :class:`Kvm`, :class:`Vm` and :class:`Vcpu`: owns ``fd`` until closed."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _fd(self, what: str) -> int:
        if self.fd < 0:
            raise KvmError(what, errno.EBADF, f"{type(self).__name__} is closed")
        return self.fd

    def _ioctl(self, name: str, request: int, arg: object = ffi.NULL) -> int:
        """Issue ``request`` with a pointer (or NULL) argument; raise KvmError on failure."""
        return check(int(lib.pyvmm_ioctl(self._fd(name), request, arg)), name)

    def _ioctl_val(self, name: str, request: int, value: int) -> int:
        """Issue ``request`` with an integer argument."""
        return check(int(lib.pyvmm_ioctl_val(self._fd(name), request, value)), name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; callers should close()
        with contextlib.suppress(Exception):
            self.close()
