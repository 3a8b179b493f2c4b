"""``pyvmm run --gdb`` driven by the real client: Debian's stock gdb in batch mode, against
guests/debugme.c (ELF64 and multiboot) on the real /dev/kvm; cores opened by gdb."""

from __future__ import annotations

import contextlib
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile

from tests.cli import COMMAND, pyvmm

GDB = shutil.which("gdb")
needs_gdb = pytest.mark.skipif(GDB is None, reason="gdb not installed (apt-get install gdb)")


_STUBS: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _kill_leftover_stubs() -> Iterator[None]:
    """A failed test must not leave a stub (and its VM) running."""
    yield
    while _STUBS:
        p = _STUBS.pop()
        if p.poll() is None:
            p.kill()
            p.wait()


class Stub:
    """A ``pyvmm run --gdb 127.0.0.1:0`` process and the port it chose."""

    def __init__(self, guest: Path, *args: str) -> None:
        self.proc = subprocess.Popen([*COMMAND, "run", "--gdb", "127.0.0.1:0", *args, str(guest)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _STUBS.append(self.proc)
        self.head: list[str] = []
        assert self.proc.stderr is not None
        for _ in range(40):
            line = self.proc.stderr.readline()
            self.head.append(line)
            m = re.search(r"gdb stub on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                return
            if not line:
                break
        self.proc.kill()
        raise AssertionError(f"no port announced: {''.join(self.head)}")

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, "".join(self.head) + err


def gdb(elf: Path, port: int, *commands: str, timeout: float = 90,
        interrupt_after: float | None = None, arch: str | None = None) -> str:
    """Run gdb -batch with ``commands`` after ``target remote``; with ``interrupt_after``,
    send gdb SIGINT (Ctrl-C) that many seconds in; ``arch``: ``set architecture`` first."""
    assert GDB is not None
    argv = [GDB, "-nx", "-batch", "-ex", "set pagination off"]
    if arch:
        argv += ["-ex", f"set architecture {arch}"]
    argv += ["-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        argv += ["-ex", c]
    p = subprocess.Popen([*argv, str(elf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True)
    if interrupt_after is not None:
        time.sleep(interrupt_after)
        p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=timeout)
    return out


def symbol(elf: Path, name: str) -> int:
    with elf.open("rb") as f:
        tab = ELFFile(f).get_section_by_name(".symtab")
        return int(next(s["st_value"] for s in tab.iter_symbols() if s.name == name))


@needs_gdb
def test_hbreak_continue_step_registers_and_memory(guests: Path) -> None:
    elf = guests / "debugme.elf"
    stub = Stub(elf)
    out = gdb(elf, stub.port, "hbreak debug_checkpoint", "continue", "p value", "p/x $rip",
              "bt", "info registers cr3", "p/x $cr0", "x/2xg &watched", "stepi", "p/x $pc",
              "p debug_compute::local", "set var watched = 0x55", "p/x watched", "continue")
    rc, stdout, err = stub.finish()
    assert "Breakpoint 1, debug_checkpoint (value=value@entry=22)" in out, out
    assert "$1 = 22" in out
    assert f"$2 = {symbol(elf, 'debug_checkpoint'):#x}" in out
    assert re.search(r"#1 .* debug_compute \(seed=seed@entry=7\)", out), out
    assert re.search(r"cr3\s+0x[0-9a-f]+", out), out
    assert re.search(r"\$3 = 0x8[0-9a-f]{7}", out), out  # CR0.PG set
    pcs = [int(v, 16) for v in re.findall(r"\$4 = (0x[0-9a-f]+)", out)]
    assert pcs and pcs[0] != symbol(elf, "debug_checkpoint"), out  # stepi moved on
    assert "$6 = 0x55" in out, out  # a write to guest memory, read back
    assert "exited normally" in out, out
    assert rc == 0, err
    assert "debugme: computed 22, watched 0x1234" in stdout  # the guest's own store won


@needs_gdb
def test_watchpoint_fires_on_the_known_store(guests: Path) -> None:
    elf = guests / "debugme.elf"
    stub = Stub(elf)
    out = gdb(elf, stub.port, "hbreak debug_compute", "continue", "watch watched", "continue",
              "p/x watched", "p $pc", "delete", "continue")
    rc, _, err = stub.finish()
    assert re.search(r"atchpoint 2: watched\s+Old value = 0\s+New value = 4660", out), out
    # the trap comes after the store: inside debug_store, past its first instruction
    pc = int(re.search(r"\$2 = .*(0x[0-9a-f]+) <debug_store\+(\d+)>", out).group(1), 16)  # type: ignore[union-attr]
    assert pc > symbol(elf, "debug_store")
    assert rc == 0, err


@needs_gdb
def test_two_vcpus_are_two_threads_and_ctrl_c_pauses(guests: Path) -> None:
    elf = guests / "debugme.elf"
    stub = Stub(elf, "--cpus", "2", "--append", "spin")
    out = gdb(elf, stub.port, "continue", "info threads", "thread 2", "p $pc", "p spins > 0",
              "set var release = 1", "continue", interrupt_after=3)
    rc, stdout, err = stub.finish()
    assert "received signal SIGINT" in out, out
    assert re.search(r"1\s+Thread 1 \(vCPU 0\)", out), out
    assert re.search(r"2\s+Thread 2 \(vCPU 1\)", out), out
    assert re.search(r"\$1 = .*<debug_ap_loop\+\d+>", out), out
    assert "$2 = 1" in out, out
    assert "exited normally" in out
    assert rc == 0, err
    assert "released after" in stdout


@needs_gdb
def test_multiboot_kernel_starts_in_32_bit_mode(guests: Path) -> None:
    """A multiboot .flat is an ELF32 holding the 32-bit entry and 64-bit code, as under
    QEMU: gdb is told the architecture (README, "Debugging a guest")."""
    flat = guests / "debugme.flat"
    stub = Stub(flat)
    out = gdb(flat, stub.port, "p/x $eflags", "p/x $cr0", "hbreak debug_checkpoint", "continue",
              "p/x $pc", "p/x $cr0", "continue", arch="i386:x86-64")
    rc, _, err = stub.finish()
    crs = re.findall(r"= (0x[0-9a-f]+)", out)
    assert int(crs[1], 16) & 1 and not int(crs[1], 16) >> 31, out  # protected mode, no paging
    assert int(crs[2], 16) == symbol(flat, "debug_checkpoint"), out
    assert int(crs[3], 16) >> 31, out  # by then the kernel has paging on
    assert "exited normally" in out
    assert rc == 0, err


@needs_gdb
def test_detach_lets_the_guest_run_on_and_kill_ends_it(guests: Path) -> None:
    elf = guests / "debugme.elf"
    stub = Stub(elf)
    gdb(elf, stub.port, "hbreak debug_checkpoint", "continue", "detach")
    rc, stdout, err = stub.finish()
    assert rc == 0, err
    assert "debugme: computed 22" in stdout
    stub = Stub(elf, "--append", "spin")
    gdb(elf, stub.port, "kill")
    rc, _, err = stub.finish()
    assert rc == 128 + 9, err
    assert "killed by the debugger" in err


@needs_gdb
def test_core_of_a_crashed_guest_opens_in_gdb(guests: Path, tmp_path: Path) -> None:
    elf = guests / "debugme.elf"
    core = tmp_path / "core"
    r = pyvmm("run", "--core", str(core), "--cpus", "2", "--append", "crash", str(elf))
    assert r.returncode == 123, r.stderr
    assert f"core written to {core}" in r.stderr
    out = subprocess.run([GDB or "gdb", "-nx", "-batch", "-ex", "bt", "-ex", "info threads",
                          "-ex", "p/x $rdi", "-ex", "p/x *(long *)&release", str(elf), str(core)],
                         capture_output=True, text=True, timeout=60).stdout
    assert "Program terminated with signal SIGSEGV" in out, out
    assert re.search(r"#0 .*debug_crash_inner \(where=", out), out
    assert re.search(r"#1 .*debug_crash_outer \(\)", out), out
    assert re.search(r"#2 .*main \(", out), out
    assert re.search(r"\* 1\s+LWP 1", out) and re.search(r"2\s+LWP 2", out), out
    assert "$1 = 0x7ff000000000" in out, out
    assert "$2 = 0x0" in out, out


def test_assertion_core_and_timeout_core(guests: Path, tmp_path: Path) -> None:
    elf = guests / "debugme.elf"
    for mode, status, signo in (("assert", 126, signal.SIGABRT), ("spin", 124, signal.SIGALRM)):
        core = tmp_path / f"core-{mode}"
        r = pyvmm("run", "--core", str(core), "--timeout", "1", "--append", mode, str(elf))
        assert r.returncode == status, r.stderr
        with core.open("rb") as f:
            e = ELFFile(f)
            assert e.header.e_type == "ET_CORE" and e.header.e_machine == "EM_X86_64"
            notes = [n for seg in e.iter_segments() if seg.header.p_type == "PT_NOTE"
                     for n in seg.iter_notes()]
            prstatus = [n for n in notes if n["n_type"] == "NT_PRSTATUS"]
            assert len(prstatus) == 1
            desc = prstatus[0]["n_descdata"]
            assert len(desc) == 336  # struct elf_prstatus on x86-64
            assert int.from_bytes(desc[12:14], "little") == signo  # pr_cursig
            loads = [s for s in e.iter_segments() if s.header.p_type == "PT_LOAD"]
            main = symbol(elf, "main")
            assert any(s.header.p_vaddr <= main < s.header.p_vaddr + s.header.p_memsz for s in loads)


def test_core_of_tables_that_alias_all_of_ram_is_bounded(guests: Path, tmp_path: Path) -> None:
    """Regression: a guest whose page tables alias RAM ~100,000 times (guests/hostile.c
    aliascore) made --core write a file whose apparent size headed for terabytes, still
    writing after 60 s.  Now each physical page is written once: the core is no larger than
    guest RAM plus its headers, written in seconds, and still holds the guest's code."""
    core = tmp_path / "core"
    elf = guests / "hostile.elf"
    start = time.monotonic()
    r = pyvmm("run", "--mem", "32M", "--core", str(core), "--append", "aliascore", str(elf),
              timeout=60)
    assert r.returncode == 123, r.stderr
    assert time.monotonic() - start < 30
    assert core.stat().st_size <= (32 << 20) + (1 << 20)
    with core.open("rb") as f:
        loads = [s.header for s in ELFFile(f).iter_segments() if s.header.p_type == "PT_LOAD"]
    assert sum(h.p_filesz for h in loads) <= 32 << 20
    main = symbol(elf, "main")
    assert any(h.p_vaddr <= main < h.p_vaddr + h.p_memsz for h in loads)


def test_no_core_when_the_guest_exits_cleanly(guests: Path, tmp_path: Path) -> None:
    core = tmp_path / "core"
    r = pyvmm("run", "--core", str(core), str(guests / "debugme.elf"))
    assert r.returncode == 0 and not core.exists()


def test_stub_refuses_a_non_loopback_address_without_the_flag(guests: Path) -> None:
    r = pyvmm("run", "--gdb", "0.0.0.0:0", str(guests / "debugme.elf"))
    assert r.returncode == 2
    assert "not loopback" in r.stderr and "--gdb-allow-remote" in r.stderr
    assert "Traceback" not in r.stderr
    r = pyvmm("run", "--gdb", "0.0.0.0:0", "--gdb-allow-remote", "--gdb-no-wait",
              str(guests / "debugme.elf"))
    assert r.returncode == 0, r.stderr
    assert "warning: the gdb stub listens on 0.0.0.0" in r.stderr


def _exchange(sock: socket.socket, data: bytes, want: int = 1) -> bytes:
    """Send raw bytes, then read until ``want`` packets (or acks) came back."""
    sock.sendall(data)
    buf = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if want == 0 and buf:
            break
        if want and buf.count(b"#") >= want and len(buf.rsplit(b"#", 1)[1]) >= 2:
            break
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
    return buf


def test_hostile_client_gets_errors_never_a_crash(guests: Path) -> None:
    """Garbage, bad checksums, oversized packets and malformed commands each get a clear
    answer; afterwards the stub still serves and the guest still runs to its end."""
    from pyvmm.debug.rsp import frame

    stub = Stub(guests / "debugme.elf")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=20) as s:
        assert _exchange(s, b"garbage\x00\xff" + b"$?#00", want=0) == b"-"  # bad checksum: nack
        assert _exchange(s, b"$" + b"A" * 20000 + b"#00", want=0) == b"-"  # oversized
        replies = {}
        for p in (b"m zz,4", b"m0,", b"mffffffffffffffff,10", b"m7ff000000000,8", b"M0,4:zz",
                  b"X100000,99:ab", b"G123", b"P999=00", b"pzz", b"Z9,0,1", b"Z1,,1",
                  b"Hg99", b"Hxq", b"T55", b"vCont;t", b"vCont;s:99", b"qXfer:features:read:x:0,1",
                  b"qXfer:features:read:target.xml:zz", b"}", b"q" * 100, b"\x00"):
            replies[p] = _exchange(s, frame(p))
        for p, r in replies.items():
            payload = r.split(b"$", 1)[1].split(b"#")[0] if b"$" in r else b"?"
            assert payload == b"" or payload.startswith(b"E"), (p, r)
        ok = _exchange(s, frame(b"?"))
        assert b"$T05thread:1;#" in ok, ok
        assert b"$OK#" in _exchange(s, frame(b"D"))
    rc, stdout, err = stub.finish()
    assert rc == 0, err
    assert "debugme: computed 22" in stdout


def test_verbose_shows_guest_events(guests: Path) -> None:
    r = pyvmm("run", "-v", "--append", "sync 2", str(guests / "hostile.elf"))
    assert re.search(r"vcpu0: .*sync.*1", r.stderr, re.IGNORECASE), r.stderr


def test_many_steps_through_the_stub(guests: Path) -> None:
    """1000 x (vCont;s, g) as gdb's stepi sends them.  Regression: the Ctrl-C watcher once
    read (blocking, holding its lock) a packet the stub had already taken, and the stub
    deadlocked within a few hundred steps."""
    from pyvmm.debug.rsp import frame

    stub = Stub(guests / "debugme.elf", "--append", "spin")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=20) as s:
        assert b"OK" in _exchange(s, frame(b"QStartNoAckMode"))
        rips = set()
        for _ in range(1000):
            assert _exchange(s, frame(b"vCont;s:1")).startswith(b"$T05thread:1;")
            g = _exchange(s, frame(b"g"))
            rips.add(g[1 + 16 * 16:1 + 17 * 16])
        assert len(rips) > 3  # it went round the spin loop
        _exchange(s, frame(b"vKill;1"))
    rc, _, err = stub.finish()
    assert rc == 137, err


@needs_gdb
def test_gdb_attaches_to_a_running_guest(guests: Path) -> None:
    """--gdb-no-wait: the guest runs at once; gdb attaching later pauses it where it is."""
    elf = guests / "debugme.elf"
    stub = Stub(elf, "--gdb-no-wait", "--append", "spin")
    time.sleep(1)
    out = gdb(elf, stub.port, "p spins > 1000", "info threads", "set var release = 1", "continue")
    rc, stdout, err = stub.finish()
    assert "$1 = 1" in out, out
    assert re.search(r"Thread 1 \(vCPU 0\) .*main \(", out), out
    assert rc == 0, err
    assert "released after" in stdout


@needs_gdb
def test_break_next_step_finish(guests: Path) -> None:
    """``break`` (Z0: a debug register on hosts without int3 at CPL0), and the source-level
    commands gdb builds from steps and temporary breakpoints."""
    elf = guests / "debugme.elf"
    stub = Stub(elf)
    out = gdb(elf, stub.port, "break debug_compute", "continue", "next", "step", "bt 1",
              "finish", "continue")
    rc, _, err = stub.finish()
    assert "Breakpoint 1, debug_compute (seed=seed@entry=7)" in out, out
    assert re.search(r"^24\s+debug_checkpoint\(local\);", out, re.M), out  # next
    assert "debug_checkpoint (value=value@entry=22) at guests/debugme.c:18" in out  # step
    assert "debug_compute (seed=seed@entry=7) at guests/debugme.c:25" in out, out  # finish
    assert "exited normally" in out
    assert rc == 0, err


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) // 1024


def test_packet_flood_keeps_the_stub_bounded(guests: Path) -> None:
    """Regression: packets sent while the guest ran were all queued (the stub's RSS grew
    by hundreds of MB in seconds).  Now at most a few are kept while it runs, and while it
    is stopped a client that does not read its replies is held back by TCP."""
    from pyvmm.debug.rsp import frame

    stub = Stub(guests / "debugme.elf", "--append", "spin")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=20) as s:
        assert b"OK" in _exchange(s, frame(b"QStartNoAckMode"))
        before = _rss_mib(stub.proc.pid)
        s.sendall(frame(b"c"))
        s.setblocking(False)
        blob = frame(b"") * 16384 + frame(b"qSupported") * 1024
        sent = 0  # into blob: the stream stays whole packets, whatever send() took
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                sent = (sent + s.send(blob[sent:])) % len(blob)
            with contextlib.suppress(BlockingIOError):
                s.recv(1 << 20)
        running = _rss_mib(stub.proc.pid)
        s.settimeout(30)
        s.sendall(blob[sent:] if sent else b"")  # end on a packet boundary: a 0x03 inside
        s.sendall(b"\x03")  # a packet is payload; Ctrl-C: still heard behind the flood
        buf = b""
        while b"$T" not in buf:
            data = s.recv(65536)
            assert data, "the stub closed the connection instead of stopping"
            buf += data
        # stopped: m packets whose replies are never read
        s.setblocking(False)
        blob = frame(b"m100000,2000") * 512
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            try:
                s.send(blob)
            except BlockingIOError:
                time.sleep(0.01)
        stopped = _rss_mib(stub.proc.pid)
    assert running - before < 25 and stopped - before < 25, (before, running, stopped)
    assert max(running, stopped) < 100


def test_refused_register_writes_and_huge_addresses_keep_the_session(guests: Path) -> None:
    """Regression: P of CR4.LA57 was acknowledged and the next continue ended pyvmm with
    121 (KVM_SET_SREGS: EINVAL) and gdb saw EOF; an address past 2^64 in c/Z ended it with
    125 (OverflowError).  Each now gets an E reply, and the guest then runs to its end."""
    from pyvmm.debug.registers import BY_NAME
    from pyvmm.debug.rsp import frame

    stub = Stub(guests / "debugme.elf")
    with socket.create_connection(("127.0.0.1", stub.port), timeout=20) as s:
        cr4 = int.from_bytes(bytes.fromhex(_exchange(s, frame(b"p%x" % BY_NAME["cr4"]))
                                           .split(b"$")[1][:16].decode()), "little")
        for value in (cr4 | 1 << 12, cr4 | 1 << 40, cr4 | 1 << 13):
            packet = b"P%x=%s" % (BY_NAME["cr4"], value.to_bytes(8, "little").hex().encode())
            assert b"$E" in _exchange(s, frame(packet)), hex(value)
        for packet in (b"c10000000000000000", b"Z1,10000000000000000,1", b"mffffffffffffffff,10",
                       b"Mffffffffffffffff,2:0000", b"P%x=%s" % (BY_NAME["fctrl"], b"00000100")):
            assert b"$E" in _exchange(s, frame(packet)), packet
        assert b"$T05thread:1;#" in _exchange(s, frame(b"?"))
        assert b"$W00#" in _exchange(s, frame(b"c"))
    rc, stdout, err = stub.finish()
    assert rc == 0, err
    assert "debugme: computed 22" in stdout
