"""``Kvm``: the system fd (``/dev/kvm``) and its ioctls."""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property
from types import MappingProxyType

from pyvmm.kvm.errors import OPEN_HINTS, KvmError, step_error
from pyvmm.kvm.fd import FdObject
from pyvmm.kvm.native import Cdata, ffi, lib
from pyvmm.kvm.vcpu import STEPS, cpuid_entry
from pyvmm.kvm.vm import Vm

DEFAULT_PATH = "/dev/kvm"


def default_path() -> str:
    """``/dev/kvm``, or ``$PYVMM_KVM_DEVICE`` (tests use it to simulate a missing device)."""
    return os.environ.get("PYVMM_KVM_DEVICE", DEFAULT_PATH)


CAP_MAX_VCPUS = int(lib.KVM_CAP_MAX_VCPUS)
CAP_SET_TSS_ADDR = int(lib.KVM_CAP_SET_TSS_ADDR)
CAP_SET_IDENTITY_MAP_ADDR = int(lib.KVM_CAP_SET_IDENTITY_MAP_ADDR)

#: The capabilities pyvmm looks at, by their KVM_CAP_* name (without the prefix).
CAPABILITIES = sorted(n[len("KVM_CAP_"):] for n in dir(lib) if n.startswith("KVM_CAP_"))


_SUPPORTED_CPUID: dict[tuple[str, int], list[dict[str, int]]] = {}


class Kvm(FdObject, kind="system"):
    """``/dev/kvm``.  Creating one opens the device; ``close()`` closes it.

    Raises :class:`KvmError` with a hint when the device is missing or not accessible,
    or when its API version is not the stable 12.
    """

    def __init__(self, path: str | None = None) -> None:
        path = path or default_path()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            err = e.errno or 0
            raise KvmError(f"open {path}", err, OPEN_HINTS.get(err, "").format(path=path)) from None
        super().__init__(fd)
        self.path = path
        if path in _CHECKED:
            return
        version = self.get_api_version()
        if version != lib.KVM_API_VERSION:
            self.close()
            raise KvmError("KVM_GET_API_VERSION", 22,
                           f"API version {version}, pyvmm needs {lib.KVM_API_VERSION}")
        _CHECKED.add(path)

    def get_api_version(self) -> int:
        """KVM_GET_API_VERSION: 12 on every kernel since 2.6.22."""
        return self._ioctl("KVM_GET_API_VERSION")

    def check_extension(self, cap: int) -> int:
        """KVM_CHECK_EXTENSION on the system fd: 0 if absent, else a cap-specific value.
        Asked once per process and device: the answer depends only on the loaded module,
        and machines are created by the thousand (each ioctl costs ~15-40 us here)."""
        key = (self.path, cap)
        value = _EXTENSIONS.get(key)
        if value is None:
            value = _EXTENSIONS[key] = self._ioctl_val("KVM_CHECK_EXTENSION", cap)
        return value

    @cached_property
    def capabilities(self) -> Mapping[str, int]:
        """Every KVM_CAP_* this build knows, queried once, as a read-only mapping."""
        return MappingProxyType(
            {name: self.check_extension(getattr(lib, "KVM_CAP_" + name)) for name in CAPABILITIES}
        )

    def get_vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE: bytes to mmap from a vCPU fd (kvm_run + PIO data + rings)."""
        return self._ioctl("KVM_GET_VCPU_MMAP_SIZE")

    def get_supported_cpuid(self, max_entries: int = 256) -> list[dict[str, int]]:
        """KVM_GET_SUPPORTED_CPUID: the leaves KVM can expose, as dicts of the entry fields.

        The answer depends only on the host and the module, so it is asked once per process
        and device and copied out afterwards (machines are often created by the thousand).
        """
        key = (self.path, max_entries)
        cached = _SUPPORTED_CPUID.get(key)
        if cached is None:
            cpuid = ffi.new("struct kvm_cpuid2 *", {"nent": max_entries, "entries": max_entries})
            self._ioctl("KVM_GET_SUPPORTED_CPUID", cpuid)
            cached = _SUPPORTED_CPUID[key] = [cpuid_entry(cpuid.entries[i])
                                              for i in range(cpuid.nent)]
        return [dict(e) for e in cached]

    def get_msr_index_list(self) -> list[int]:
        """KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU."""
        return self._msr_list("KVM_GET_MSR_INDEX_LIST")

    def get_msr_feature_index_list(self) -> list[int]:
        """KVM_GET_MSR_FEATURE_INDEX_LIST: the feature MSRs readable from the system fd."""
        return self._msr_list("KVM_GET_MSR_FEATURE_INDEX_LIST")

    def _msr_list(self, name: str) -> list[int]:
        n = 1024
        lst = ffi.new("struct kvm_msr_list *", {"nmsrs": n, "indices": n})
        self._ioctl(name, lst)
        return [int(lst.indices[i]) for i in range(lst.nmsrs)]

    def create_vm(self, vm_type: int = 0, spec: Cdata | None = None) -> Vm:
        """KVM_CREATE_VM: a new, empty VM (no memory, no vCPUs).  With ``spec`` (a ``struct
        pyvmm_vm_spec``: type 0), also what the VM needs before its first memslot and vCPU
        (TSS and identity-map pages, the interrupt controller, the PIT), in one native call
        (cbindings/setup.c)."""
        if spec is None:
            fd = self._ioctl_val("KVM_CREATE_VM", vm_type)
        elif vm_type:
            raise ValueError("a VM made with a spec is of type 0")
        else:
            out = ffi.new("int[2]")  # step, errno
            fd = lib.pyvmm_vm_create(self._fd("KVM_CREATE_VM"), spec, out, out + 1)
            if fd < 0:
                raise step_error(out[0], out[1], STEPS)
        vm = Vm(fd, self.vcpu_mmap_size)
        vm.xsave_size = self.xsave_size(vm, vm_type)
        return vm

    def xsave_size(self, vm: Vm, vm_type: int = 0) -> int:
        """KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on ``vm``, a VM of ``vm_type``: a VM ioctl,
        but the same answer for every VM of a type, so asked once per process."""
        key = (self.path, vm_type)
        if key not in _XSAVE_SIZE:
            _XSAVE_SIZE[key] = vm.check_extension(lib.KVM_CAP_XSAVE2)
        return _XSAVE_SIZE[key]

    @property
    def vcpu_mmap_size(self) -> int:
        """KVM_GET_VCPU_MMAP_SIZE, asked once per process and device."""
        size = _MMAP_SIZE.get(self.path)
        if size is None:
            size = _MMAP_SIZE[self.path] = self.get_vcpu_mmap_size()
        return size


#: per-process answers that depend only on the loaded KVM module (see check_extension)
_CHECKED: set[str] = set()
_EXTENSIONS: dict[tuple[str, int], int] = {}
_MMAP_SIZE: dict[str, int] = {}
_XSAVE_SIZE: dict[tuple[str, int], int] = {}


def host_cpuid(leaf: int, subleaf: int = 0) -> tuple[int, int, int, int]:
    """``(eax, ebx, ecx, edx)`` of CPUID on the host CPU itself (not KVM's view)."""
    out = ffi.new("uint32_t[4]")
    lib.pyvmm_host_cpuid(leaf, subleaf, out)
    return int(out[0]), int(out[1]), int(out[2]), int(out[3])
