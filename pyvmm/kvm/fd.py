"""Ownership of one KVM file descriptor: ``close()``, context manager, no double close."""

from __future__ import annotations

import errno
import os

from pyvmm.kvm.errors import KvmError, check
from pyvmm.kvm.ioctls import IOCTLS
from pyvmm.kvm.native import ffi, lib

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import ClassVar, Self


class FdObject:
    """Base for :class:`Kvm`, :class:`Vm` and :class:`Vcpu`: owns ``fd`` until closed.

    A subclass names its row of :data:`pyvmm.kvm.ioctls.IOCTLS` (``class Vm(FdObject,
    kind="vm")``) and issues an ioctl by its name alone: the number comes from that row,
    so a name is written once per call and an ioctl the table does not list for this fd
    kind is a KeyError (a pyvmm bug), never a silently wrong request.
    """

    #: the IOCTLS row of this fd kind ("system", "vm" or "vcpu")
    KIND: ClassVar[str] = ""
    #: the ioctl numbers of that row, by name (from the compiled <linux/kvm.h>)
    REQUESTS: ClassVar[dict[str, int]] = {}

    def __init_subclass__(cls, *, kind: str | None = None, **kw: object) -> None:
        super().__init_subclass__(**kw)
        if kind is not None:
            cls.KIND = kind
            cls.REQUESTS = {name: int(getattr(lib, name)) for name, _ in IOCTLS[kind]}

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def _fd(self, what: str) -> int:
        if self.fd < 0:
            raise KvmError(what, errno.EBADF, f"{type(self).__name__} is closed")
        return self.fd

    def _ioctl(self, name: str, arg: object = ffi.NULL) -> int:
        """Issue the ioctl ``name`` with a pointer (or NULL) argument; raise KvmError on
        failure."""
        return check(int(lib.pyvmm_ioctl(self._fd(name), self.REQUESTS[name], arg)), name)

    def _ioctl_val(self, name: str, value: int) -> int:
        """Issue the ioctl ``name`` with an integer argument."""
        return check(int(lib.pyvmm_ioctl_val(self._fd(name), self.REQUESTS[name], value)), name)

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort; callers should close()
        try:  # noqa: SIM105 - not contextlib.suppress: an import the run path does without
            self.close()
        except Exception:  # at collection there is no one to tell
            pass
