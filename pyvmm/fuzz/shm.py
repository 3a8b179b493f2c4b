"""System V shared memory, as AFL++ hands it out (``__AFL_SHM_ID`` for the coverage map,
``__AFL_SHM_FUZZ_ID`` for test cases): shmat(2) and shmdt(2) through ctypes.

The segment's size comes from shmctl(IPC_STAT), not from what anyone says it is: the
id is from the environment, and a view longer than the segment would read past it.
"""

from __future__ import annotations

import ctypes
import os
import struct

from pyvmm.errors import ConfigError

IPC_STAT = 2
#: struct shmid_ds on x86-64 Linux: struct ipc_perm (48 bytes), then size_t shm_segsz
_SEGSZ_AT = 48
_SHMID_DS_SIZE = 112

_libc = ctypes.CDLL(None, use_errno=True)  # this process's own libc: no ldconfig run
_libc.shmat.restype = ctypes.c_void_p
_libc.shmat.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_int)
_libc.shmdt.argtypes = (ctypes.c_void_p,)
_libc.shmctl.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


class SharedMemory:
    """The segment ``shm_id`` attached read-write; ``view`` is a memoryview of all of it."""

    def __init__(self, shm_id: int, what: str) -> None:
        ds = ctypes.create_string_buffer(_SHMID_DS_SIZE)
        if _libc.shmctl(shm_id, IPC_STAT, ds) < 0:
            raise ConfigError(f"{what}: shared memory id {shm_id}: {os.strerror(ctypes.get_errno())}")
        self.size = struct.unpack_from("<Q", ds.raw, _SEGSZ_AT)[0]
        addr = _libc.shmat(shm_id, None, 0)
        if addr is None or addr == ctypes.c_void_p(-1).value:
            raise ConfigError(f"{what}: cannot attach shared memory id {shm_id}: "
                              f"{os.strerror(ctypes.get_errno())}")
        self._addr: int | None = addr
        self._array = (ctypes.c_ubyte * self.size).from_address(addr)
        self.view = memoryview(self._array).cast("B")

    def close(self) -> None:
        """Detach (every view of it must be gone: the memory goes with it)."""
        if self._addr is not None:
            self.view.release()
            _libc.shmdt(self._addr)
            self._addr = None


def from_env(name: str) -> SharedMemory | None:
    """The segment whose id is in environment variable ``name``; None when it is unset."""
    value = os.environ.get(name)
    if value is None:
        return None
    try:
        shm_id = int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a shared memory id") from None
    return SharedMemory(shm_id, name)
