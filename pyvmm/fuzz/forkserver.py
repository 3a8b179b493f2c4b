"""AFL++'s forkserver protocol, served by a process that keeps its VM.

afl-fuzz starts the target with a control pipe on fd 198 (it writes) and a status pipe on
fd 199 (it reads).  The target says hello with one 32-bit word (:func:`hello`): FS_OPT_*
flags for the coverage map's size and for test cases in shared memory; when it asks for
the latter, afl-fuzz answers with a word of its own.  Then, per input, afl-fuzz writes 4
bytes (whether the last run timed out), reads a pid (4 bytes), waits up to its timeout for
a status word (4 bytes, as waitpid(2) gives it) and, when the time is up, kills that pid
and reads the status anyway.

A KVM VM cannot be forked (the child's ioctls on the parent's VM fail), so this process
runs every input itself, against one VM reset by snapshot (:class:`pyvmm.fuzz.Target`).
The pid it reports is a *decoy*: a small child that only waits (:class:`Decoy`).  When
afl-fuzz times out and kills the decoy, the target's watchdog sees its pidfd become
readable and kicks the vCPU out; the input ends, the status word says SIGKILL (afl-fuzz
counts the run as a timeout because it killed the pid itself), and the next input gets a
new decoy.  Statuses are waitpid-style: an exit code << 8, or the signal AFL treats as a
crash: SIGSEGV for a guest crash, SIGABRT for GUEST_ASSERT.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Callable

from pyvmm.errors import ConfigError
from pyvmm.fuzz.shm import SharedMemory, from_env
from pyvmm.fuzz.target import MAX_MAP, FuzzResult

FORKSRV_FD = 198  #: control: afl-fuzz -> target; FORKSRV_FD + 1: status, target -> afl-fuzz
FS_OPT_ENABLED = 0x80000001
FS_OPT_MAPSIZE = 0x40000000
FS_OPT_SHDMEM_FUZZ = 0x01000000
SHM_ENV, SHM_FUZZ_ENV = "__AFL_SHM_ID", "__AFL_SHM_FUZZ_ID"
_WORD = struct.Struct("<I")


def set_mapsize(size: int) -> int:
    """FS_OPT_SET_MAPSIZE: a map of ``size`` bytes in the hello word's bits 1-23."""
    if not 1 < size <= MAX_MAP:
        raise ValueError(f"map size {size} is not 2..{MAX_MAP}")
    return (size - 1) << 1


def get_mapsize(word: int) -> int:
    """FS_OPT_GET_MAPSIZE, the other way."""
    return ((word & 0x00FFFFFE) >> 1) + 1


def hello(map_size: int, shmem_input: bool) -> int:
    """The hello word: options on, the map's size (when there is a map), shared-memory
    test cases (when afl-fuzz offered them)."""
    word = FS_OPT_ENABLED
    if map_size:
        word |= FS_OPT_MAPSIZE | set_mapsize(map_size)
    if shmem_input:
        word |= FS_OPT_SHDMEM_FUZZ
    return word


def under_afl() -> bool:
    """Whether fds 198 and 199 are open (afl-fuzz, afl-showmap, afl-tmin set them up)."""
    try:
        os.fstat(FORKSRV_FD)
        os.fstat(FORKSRV_FD + 1)
    except OSError:
        return False
    return True


def read_word(fd: int) -> int | None:
    """One 32-bit word; None at end of file (afl-fuzz went away)."""
    data = b""
    while len(data) < 4:
        chunk = os.read(fd, 4 - len(data))
        if not chunk:
            return None
        data += chunk
    return int(_WORD.unpack(data)[0])


def write_word(fd: int, value: int) -> None:
    os.write(fd, _WORD.pack(value & 0xFFFFFFFF))


def shm_input(shm: SharedMemory) -> memoryview:
    """The test case in AFL's shared memory: a 32-bit length, then the bytes (the length is
    afl-fuzz's word, but it is cut to the segment all the same)."""
    n = int(_WORD.unpack_from(shm.view, 0)[0])
    return shm.view[4:4 + min(n, shm.size - 4)]


def copy_coverage(cov: SharedMemory, coverage: memoryview) -> None:
    n = min(len(coverage), cov.size)
    cov.view[:n] = coverage[:n]


def publish_coverage(coverage: memoryview) -> None:
    """One run's map into AFL's (``__AFL_SHM_ID``), if there is one: what afl-showmap
    reads from a target it ran without the forkserver."""
    cov = from_env(SHM_ENV)
    if cov is not None:
        try:
            copy_coverage(cov, coverage)
        finally:
            cov.close()


class Decoy:
    """The pid afl-fuzz is told about: ``/bin/sh`` reading a pipe whose other end only
    this process holds, so it also ends when this process does."""

    def __init__(self) -> None:
        self.pid, self.pidfd = -1, -1
        r, self._w = os.pipe()
        try:
            self.pid = os.posix_spawn("/bin/sh", ["/bin/sh", "-c", "read _"], dict(os.environ),
                                      file_actions=[(os.POSIX_SPAWN_DUP2, r, 0),
                                                    (os.POSIX_SPAWN_CLOSE, FORKSRV_FD),
                                                    (os.POSIX_SPAWN_CLOSE, FORKSRV_FD + 1)])
            self.pidfd = os.pidfd_open(self.pid)
        except BaseException:
            self.close()  # the pipe, and a child that was spawned
            raise
        finally:
            os.close(r)

    def alive(self) -> bool:
        """False once it has exited (reaped here, once)."""
        if self.pid <= 0:
            return False
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            pid = self.pid
        if pid == 0:
            return True
        self.pid = -1  # reaped: the number may be another process's from now on
        return False

    def wait(self) -> None:
        """Until it has exited (killed by afl-fuzz, or its pipe closed); reaped here."""
        if self.pid > 0:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = -1

    def close(self) -> None:
        """Once; again is a no-op (an fd number closed twice may be someone else's by then)."""
        if self._w >= 0:
            os.close(self._w)  # it reads end of file and exits, unless it was killed already
            self._w = -1
        self.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class ForkServer:
    """Serve afl-fuzz: ``run(data)`` runs one input (:meth:`pyvmm.fuzz.Target.run`);
    ``watch(pidfd)`` makes the running input end when the decoy dies; ``map_size`` is the
    guest's map.  Inputs come from AFL's shared memory when it offers it, else from
    ``read_input()`` (the @@ file or stdin)."""

    def __init__(self, run: Callable[[memoryview | bytes], FuzzResult], watch: Callable[[int | None], None],
                 map_size: int, read_input: Callable[[], bytes]) -> None:
        self.run, self.watch, self.map_size, self.read_input = run, watch, map_size, read_input
        self.executions = 0

    def serve(self) -> int:
        """Until afl-fuzz closes the control pipe; returns 0."""
        ctl, st = FORKSRV_FD, FORKSRV_FD + 1
        cov = from_env(SHM_ENV)
        tests = from_env(SHM_FUZZ_ENV)
        decoy: Decoy | None = None
        try:
            write_word(st, hello(self.map_size, tests is not None))
            if tests is not None:
                reply = read_word(ctl)
                if reply != FS_OPT_ENABLED | FS_OPT_SHDMEM_FUZZ:
                    raise ConfigError(f"afl-fuzz did not take shared-memory test cases "
                                      f"(answered {reply!r}); this afl-fuzz is not one pyvmm knows")
            while read_word(ctl) is not None:
                if decoy is None or not decoy.alive():
                    # the new one watched before the old one's pidfd closes: their fd
                    # numbers can never be the same
                    old, decoy = decoy, Decoy()
                    self.watch(decoy.pidfd)
                    if old is not None:
                        old.close()
                write_word(st, decoy.pid)
                data = shm_input(tests) if tests is not None else self.read_input()
                r = self.run(data)
                if r.status == "timeout" and decoy.alive():
                    # pyvmm's own --timeout came first: a SIGKILL afl-fuzz did not send
                    # itself counts as a crash there, so the timeout is left to afl-fuzz,
                    # whose -t kills the decoy
                    decoy.wait()
                if cov is not None:
                    copy_coverage(cov, r.coverage)
                write_word(st, r.wait_status)
                self.executions += 1
        finally:
            self.watch(None)
            if decoy is not None:
                decoy.close()
            for shm in (cov, tests):
                if shm is not None:
                    shm.close()
        return 0
