"""pyvmm.fuzz without a VM (issue 21): the forkserver's words as AFL++ 4.x reads them, the
whole protocol served over real pipes on fds 198/199 (with a stand-in for the guest run),
the decoy pid's kill ending the running input, real SysV shared memory, and the checks on
what a hostile guest passes to GUEST_FUZZ_INPUT."""

from __future__ import annotations

import ctypes
import os
import select
import signal
import struct
import threading
import time
from types import SimpleNamespace

import pytest

from pyvmm.errors import ConfigError
from pyvmm.fuzz import forkserver as fs
from pyvmm.fuzz.shm import SharedMemory, from_env
from pyvmm.fuzz.target import (
    FUZZ_STAGE,
    MAX_INPUT,
    FuzzResult,
    FuzzSetupError,
    classify,
    input_point,
)
from pyvmm.vstate.result import Outcome, RunStatus


def test_hello_word_is_what_afl_decodes():
    # AFL++ 4.04c logged "Extended forkserver functions received (c101ffff)" for this target
    assert fs.hello(65536, True) == 0xC101FFFF
    assert fs.hello(0, False) == fs.FS_OPT_ENABLED  # no map: no size claimed
    for size in (64, 65536, 1 << 20, 1 << 23):
        assert fs.get_mapsize(fs.hello(size, False)) == size
    for bad in (0, 1, (1 << 23) + 1):
        with pytest.raises(ValueError):
            fs.set_mapsize(bad)


@pytest.mark.parametrize("kind, event_kind, want", [
    (RunStatus.DONE, None, ("ok", 0, 0)),
    (RunStatus.SHUTDOWN, None, ("ok", 0, 0)),
    (RunStatus.EXIT, None, ("ok", 0, 5)),
    (RunStatus.ASSERT, "assert", ("assert", signal.SIGABRT, 0)),
    (RunStatus.ASSERT, "exception", ("crash", signal.SIGSEGV, 0)),
    (RunStatus.ASSERT, "error", ("crash", signal.SIGSEGV, 0)),
    (RunStatus.CRASH, None, ("crash", signal.SIGSEGV, 0)),
    (RunStatus.KICKED, None, ("timeout", signal.SIGKILL, 0)),
    # an input that sleeps (ACPI S3) or takes a debug exit raised a VMM error, which ended
    # the whole campaign: they are the guest's doing, so crashes
    (RunStatus.SUSPEND, None, ("crash", signal.SIGSEGV, 0)),
    (RunStatus.DEBUG, None, ("crash", signal.SIGSEGV, 0)),
])
def test_outcomes_map_to_the_statuses_afl_counts(kind, event_kind, want):
    from pyvmm.devices.ucall import GuestEvent

    out = Outcome(kind, 0, 5 if kind == RunStatus.EXIT else None)
    if event_kind:
        out.details["event"] = GuestEvent(event_kind, 0)
    assert classify(out, False) == want
    assert classify(Outcome(RunStatus.DONE, 0), True)[0] == "timeout"  # the watchdog fired


def test_wait_status_is_waitpids():
    r = FuzzResult("ok", 0, 7, "", memoryview(b""), 0)
    assert os.WIFEXITED(r.wait_status) and os.WEXITSTATUS(r.wait_status) == 7
    r = FuzzResult("crash", signal.SIGSEGV, 0, "", memoryview(b""), 0)
    assert os.WIFSIGNALED(r.wait_status) and os.WTERMSIG(r.wait_status) == signal.SIGSEGV


class FakeMemory:
    def __init__(self, ram: tuple[int, int]) -> None:
        self.ram = ram

    def is_ram(self, gpa: int, n: int = 1) -> bool:
        lo, hi = self.ram
        return n >= 0 and lo <= gpa and gpa + n <= hi


def event(*args: int) -> SimpleNamespace:
    return SimpleNamespace(args=(FUZZ_STAGE, *args), stage=FUZZ_STAGE)


@pytest.mark.parametrize("args, words", [
    ((0x1000, 0, 0x9000), "buffer size 0"),
    ((0x1000, MAX_INPUT + 1, 0x9000), "buffer size"),
    ((0x7FFF_0000, 4096, 0x9000), "not in guest RAM"),
    ((0xFFFF_FFFF_FFFF_F000, 4096, 0x9000), "not in guest RAM"),
    ((0x1000, 4096, 0x1800), "outside the buffer"),
    ((0x1000, 4096, 0xFFFF_FFFF_FFFF_FFFC), "not 8 bytes"),
])
def test_hostile_input_points_are_refused(args, words):
    m = SimpleNamespace(memory=FakeMemory((0, 1 << 20)))
    with pytest.raises(FuzzSetupError, match=words):
        input_point(m, event(*args))  # type: ignore[arg-type]
    p = input_point(m, event(0x1000, 4096, 0x9000))  # type: ignore[arg-type]
    assert (p.buf, p.maxlen, p.length_at) == (0x1000, 4096, 0x9000)


_libc = ctypes.CDLL(None, use_errno=True)
IPC_PRIVATE, IPC_CREAT, IPC_RMID = 0, 0o1000, 0


@pytest.fixture
def segment():
    shm_id = _libc.shmget(IPC_PRIVATE, 4096, IPC_CREAT | 0o600)
    assert shm_id >= 0, os.strerror(ctypes.get_errno())
    yield shm_id
    _libc.shmctl(shm_id, IPC_RMID, None)


def test_shared_memory_test_cases_are_cut_to_the_segment(segment, monkeypatch):
    shm = SharedMemory(segment, "test")
    try:
        assert shm.size == 4096
        shm.view[:9] = struct.pack("<I", 5) + b"hello"
        assert bytes(fs.shm_input(shm)) == b"hello"
        shm.view[:4] = struct.pack("<I", 0xFFFFFFFF)  # afl's word, but a lie
        assert len(fs.shm_input(shm)) == 4092
    finally:
        shm.close()
    monkeypatch.setenv("X_SHM", "nope")
    with pytest.raises(ConfigError, match="not a shared memory id"):
        from_env("X_SHM")
    monkeypatch.setenv("X_SHM", "2147483646")
    with pytest.raises(ConfigError, match="shared memory id"):
        from_env("X_SHM")
    assert from_env("X_UNSET_SHM") is None


class Afl:
    """afl-fuzz's side of the pipes, on fds 198/199 of this process."""

    def __init__(self) -> None:
        ctl_r, self.ctl_w = os.pipe()
        self.st_r, st_w = os.pipe()
        self.saved = [os.dup(fd) if _open(fd) else None for fd in (fs.FORKSRV_FD, fs.FORKSRV_FD + 1)]
        os.dup2(ctl_r, fs.FORKSRV_FD)
        os.dup2(st_w, fs.FORKSRV_FD + 1)
        os.close(ctl_r)
        os.close(st_w)

    def word(self) -> int:
        ready, _, _ = select.select([self.st_r], [], [], 10)
        assert ready, "no word from the forkserver"
        return int(struct.unpack("<I", os.read(self.st_r, 4))[0])

    def send(self, value: int) -> None:
        os.write(self.ctl_w, struct.pack("<I", value))

    def hang_up(self) -> None:
        """End of file on the control pipe: the server returns."""
        os.close(self.ctl_w)

    def close(self) -> None:
        """Put fds 198/199 back (once the server is done with them)."""
        for fd, saved in zip((fs.FORKSRV_FD, fs.FORKSRV_FD + 1), self.saved, strict=True):
            if saved is None:
                os.close(fd)
            else:
                os.dup2(saved, fd)
                os.close(saved)
        os.close(self.st_r)


def _open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_the_protocol_over_real_pipes_and_afls_kill_of_the_decoy(segment, monkeypatch):
    cov_shm = SharedMemory(segment, "test")
    monkeypatch.setenv(fs.SHM_ENV, str(segment))
    monkeypatch.delenv(fs.SHM_FUZZ_ENV, raising=False)
    watched: list[int | None] = []
    inputs = iter([b"first", b"HANG", b"third"])

    def run(data: memoryview | bytes) -> FuzzResult:
        cov = bytearray(64)
        if bytes(data) == b"HANG":  # run until the decoy dies, as the watchdog would see it
            pidfd = watched[-1]
            assert pidfd is not None
            assert select.select([pidfd], [], [], 10)[0], "the decoy was not killed"
            return FuzzResult("timeout", signal.SIGKILL, 0, "", memoryview(cov), 0)
        cov[3] = len(data)
        return FuzzResult("ok", 0, len(data), "", memoryview(cov), 0)

    afl = Afl()
    server = fs.ForkServer(run, watched.append, 64, lambda: next(inputs))
    t = threading.Thread(target=server.serve)
    t.start()
    try:
        assert afl.word() == fs.hello(64, False)
        pids = []
        for expect in ("first", "HANG", "third"):
            afl.send(0)
            pid = afl.word()
            pids.append(pid)
            os.kill(pid, 0)  # a live process afl-fuzz may kill
            if expect == "HANG":
                time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)  # afl-fuzz's timeout
                assert afl.word() == signal.SIGKILL
            else:
                status = afl.word()
                assert os.WEXITSTATUS(status) == len(expect)
                assert cov_shm.view[3] == len(expect)
        assert pids[0] == pids[1] != pids[2]  # one decoy until it is killed
    finally:
        afl.hang_up()
        t.join(timeout=10)
        afl.close()
        cov_shm.close()
    assert not t.is_alive() and server.executions == 3
    assert watched[-1] is None
    with pytest.raises(ProcessLookupError):  # the last decoy is gone, reaped
        os.kill(pids[2], 0)


def test_a_target_has_one_vcpu():
    from pyvmm.fuzz import Target

    with pytest.raises(ConfigError, match="one vCPU"):
        Target("guest.elf", cpus=2)


def test_a_target_refuses_a_nan_timeout():
    from pyvmm.fuzz import Target

    with pytest.raises(ConfigError, match="not a number of seconds"):
        Target("guest.elf", timeout=float("nan"))


def test_a_decoy_closes_once():
    """A failed new decoy left the old one to be closed a second time: its fd numbers,
    by then perhaps another file's, were closed again."""
    d = fs.Decoy()
    fds = (d._w, d.pidfd)
    d.close()
    keep = [os.open("/dev/null", os.O_RDONLY) for _ in range(4)]  # reuse those numbers
    try:
        d.close()
        for fd in keep:
            os.fstat(fd)  # still open
    finally:
        for fd in keep:
            os.close(fd)
    assert d._w == d.pidfd == -1 and fds[0] >= 0


def test_the_watchdog_ignores_a_wake_up_from_a_pidfd_watched_before():
    """A new decoy's pidfd can get the number of the one just closed: watching it anew
    starts clean (the race this guards, a wake-up of the old watch handled after the new
    watch, is closed by the watch's generation; this checks the sequence around it)."""
    from pyvmm.fuzz.watchdog import Watchdog

    kicks = []
    wd = Watchdog(lambda: kicks.append(1))
    try:
        r, w = os.pipe()
        os.close(w)  # r is readable (end of file) at once: as a dead process's pidfd
        wd.watch(r)
        deadline = time.monotonic() + 2
        while not wd.died and time.monotonic() < deadline:
            time.sleep(0.005)
        assert wd.died
        os.close(r)
        r2, w2 = os.pipe()  # a live one, watched anew, most likely under r's old number
        wd.watch(r2)
        time.sleep(0.1)
        assert not wd.died
        wd.arm(None)
        time.sleep(0.05)
        assert wd.disarm() is False and kicks == []
        os.close(r2)
        os.close(w2)
    finally:
        wd.watch(None)
        wd.close()


def test_pyvmms_own_timeout_waits_for_afls_kill(segment, monkeypatch):
    """An input pyvmm's own --timeout ended was reported as SIGKILL at once, before
    afl-fuzz had timed anything out: afl-fuzz counts a kill it did not send as a crash.
    The status now waits for afl-fuzz's own kill of the decoy."""
    monkeypatch.delenv(fs.SHM_ENV, raising=False)
    monkeypatch.delenv(fs.SHM_FUZZ_ENV, raising=False)

    def run(data: memoryview | bytes) -> FuzzResult:  # the VMM's watchdog fired, decoy alive
        return FuzzResult("timeout", signal.SIGKILL, 0, "", memoryview(b""), 0)

    afl = Afl()
    server = fs.ForkServer(run, lambda pidfd: None, 0, lambda: b"HANG")
    t = threading.Thread(target=server.serve)
    t.start()
    try:
        afl.word()  # hello
        afl.send(0)
        pid = afl.word()
        r, _, _ = select.select([afl.st_r], [], [], 0.3)
        assert not r, "the status came before afl-fuzz's kill"
        os.kill(pid, signal.SIGKILL)  # afl-fuzz's -t
        assert afl.word() == signal.SIGKILL
    finally:
        afl.hang_up()
        t.join(timeout=10)
        afl.close()
    assert not t.is_alive()
