"""The one errno-to-exception path for every ioctl pyvmm issues.

Every wrapper calls :func:`check` with the ioctl's name; a negative return becomes a
:class:`KvmError` that names the ioctl, the errno and, where we know one, a hint a user
can act on.
"""

from __future__ import annotations

import errno as _errno
import os

from pyvmm.errors import ExitStatus, PyvmmError

#: Hints for a failed open of the KVM device; "{path}" is filled in.
OPEN_HINTS: dict[int, str] = {
    _errno.ENOENT: "no {path}: load kvm_intel/kvm_amd or run on a KVM-enabled runner",
    _errno.EACCES: "no permission on {path}: add yourself to the 'kvm' group or run as root",
    _errno.EPERM: "no permission on {path}: add yourself to the 'kvm' group or run as root",
    _errno.ENODEV: "{path} exists but KVM is not loaded: modprobe kvm_intel or kvm_amd",
    _errno.ENXIO: "{path} exists but KVM is not loaded: modprobe kvm_intel or kvm_amd",
}

_HINTS: dict[tuple[str, int], str] = {
    ("KVM_CREATE_VCPU", _errno.EEXIST): "a vCPU with this id already exists",
    ("KVM_CREATE_VCPU", _errno.EINVAL): "vCPU id out of range (see KVM_CAP_MAX_VCPU_ID)",
    ("KVM_CREATE_IRQCHIP", _errno.EEXIST): "the VM already has an irqchip",
    ("KVM_CREATE_IRQCHIP", _errno.EINVAL): "KVM_CREATE_IRQCHIP must come before any vCPU",
    ("KVM_SET_USER_MEMORY_REGION", _errno.EEXIST): "the range overlaps another memslot",
    ("KVM_SET_USER_MEMORY_REGION", _errno.EINVAL): "address or size not page-aligned, or "
    "a flag KVM does not support",
    ("KVM_SET_SREGS", _errno.EINVAL): "KVM refused the control-register combination "
    "(e.g. LA57, or paging without protected mode)",
    ("KVM_RUN", _errno.EFAULT): "KVM could not access guest memory or kvm_run",
}

_GENERIC: dict[int, str] = {
    _errno.ENOTTY: "this KVM does not implement the ioctl",
    _errno.ENOMEM: "the host is out of memory",
    _errno.EBADF: "the file descriptor is closed",
}


class KvmError(PyvmmError, OSError):
    """An ioctl (or the open of /dev/kvm) failed.

    ``ioctl`` is the ioctl's name as in the KVM API document, ``errno`` the error number
    and ``hint`` a sentence saying what to do about it (may be empty).
    """

    status = ExitStatus.KVM_UNAVAILABLE

    def __init__(self, ioctl: str, err: int, hint: str = "") -> None:
        self.ioctl = ioctl
        self.hint = hint or _HINTS.get((ioctl, err)) or _GENERIC.get(err, "")
        msg = f"{ioctl}: {os.strerror(err)} ({_errno.errorcode.get(err, err)})"
        if self.hint:
            msg += f": {self.hint}"
        super().__init__(err, msg)

    def __str__(self) -> str:
        return str(self.args[1])


class NativeBindingError(PyvmmError, ImportError):
    """pyvmm's C extension (``pyvmm._native``) is missing, or was built for another version
    of pyvmm (a stale ``.so`` left by an older install or an editable build): pyvmm cannot
    reach KVM, so the status is that of an unusable KVM (121).  The message says how to
    reinstall."""

    status = ExitStatus.KVM_UNAVAILABLE


def step_error(step: int, err: int, names: dict[int, str]) -> KvmError:
    """The KvmError of a native set-up call (cbindings/setup.h) that failed at ``step``
    (a PYVMM_STEP_ number ``names`` names: an ioctl, or a call such as ``mmap kvm_run``)."""
    return KvmError(names.get(step, f"set-up step {step}"), err)


def check(ret: int, ioctl: str) -> int:
    """Return ``ret`` or raise :class:`KvmError` for a negative (``-errno``) result."""
    if ret < 0:
        raise KvmError(ioctl, -ret)
    return ret
