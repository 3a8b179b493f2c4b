"""A GDB Remote Serial Protocol server over :class:`~pyvmm.debug.debugger.Debugger`
(``pyvmm run --gdb``).

:class:`GdbProtocol` answers one packet at a time and is pure logic over the debugger (unit
tests drive it with hostile packets); :class:`GdbServer` owns the sockets: it listens
(localhost unless told otherwise: whoever reaches the port controls the guest), runs the
guest freely while nobody is attached, and while gdb is attached reads packets on a thread
of its own so that Ctrl-C (a 0x03 byte) can pause a running guest.

Every vCPU is a gdb thread (id = vCPU index + 1).  All-stop mode: a stop on one vCPU stops
all; ``vCont;s`` steps one vCPU with the others held.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import queue
import select
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pyvmm.debug import rsp
from pyvmm.debug.debugger import SIGINT, DebugError, Debugger, Stop
from pyvmm.debug.registers import LAYOUT, RegisterError, target_xml
from pyvmm.errors import ConfigError, Interrupted, PyvmmError
from pyvmm.vstate.result import RunResult, RunStatus, exit_status

#: gdb's Z packet types
Z_SW, Z_HW, Z_WRITE, Z_READ, Z_ACCESS = 0, 1, 2, 3, 4
_WATCH = {Z_WRITE: "write", Z_READ: "read", Z_ACCESS: "access"}
_STOP_WATCH = {"write": "watch", "read": "rwatch", "access": "awatch"}
MAX_MEMORY = (rsp.MAX_PACKET - 8) // 2
#: packets kept that a client sent while the guest ran (gdb in all-stop mode sends none,
#: only Ctrl-C); beyond this they are dropped and counted, so a flood cannot grow the stub
MAX_PENDING = 64
SIGKILL = 9
E_BADARG, E_FAULT, E_NOSPC = b"E16", b"E0e", b"E1c"  # EINVAL, EFAULT, ENOSPC


@dataclass(frozen=True)
class Resume:
    """Run the guest: single-step vCPU ``step`` (others held), or continue all (None)."""

    step: int | None


@dataclass(frozen=True)
class Detach:
    """Drop every breakpoint and let the guest run on without the debugger."""


@dataclass(frozen=True)
class Kill:
    """End the guest now."""


Action = bytes | Resume | Detach | Kill


class GdbProtocol:
    """Packets in, replies (or actions) out, for one gdb connection.

    Z2 (``watch``) is always served: by a debug register, or on hosts whose debug
    registers never fire on data (``Debugger.emulate_watchpoints``) by single-stepping in
    pyvmm; Z3/Z4 (``rwatch``/``awatch``) only with working debug registers, else they are
    answered as unsupported.
    """

    def __init__(self, debugger: Debugger, *,
                 log: Callable[[str], None] = lambda line: None) -> None:
        self.dbg = debugger
        self.log = log
        self.thread = 0  # the vCPU of Hg (registers, memory)
        self.last_stop = b"T05thread:1;"
        self.no_ack = False
        self._gdb_features: set[str] = set()
        self._z0_hardware: set[int] = set()  # Z0 breakpoints we backed with a debug register

    @property
    def ncpus(self) -> int:
        return len(self.dbg.machine.vcpus)

    # --- replies --------------------------------------------------------------
    def stop_reply(self, stop: Stop) -> bytes:
        """The T/W/X packet for ``stop``; remembered for ``?``."""
        if stop.ended:
            r = stop.result
            if r.status in (RunStatus.EXIT, RunStatus.DONE, RunStatus.SHUTDOWN):
                reply = b"W%02x" % (exit_status(r) & 0xFF)
            else:
                reply = b"X%02x" % (stop.signal or 9)
            self.last_stop = reply
            return reply
        self.thread = stop.vcpu
        parts = [b"T%02xthread:%x;" % (stop.signal, stop.vcpu + 1)]
        if stop.reason == "watchpoint" and stop.address is not None and stop.watch_kind:
            parts.append(b"%s:%x;" % (_STOP_WATCH[stop.watch_kind].encode(), stop.address))
        elif stop.reason == "breakpoint":
            software = stop.software or (stop.address in self._z0_hardware)
            feature = "swbreak" if software else "hwbreak"
            if f"{feature}+" in self._gdb_features:
                parts.append(feature.encode() + b":;")
        self.last_stop = b"".join(parts)
        return self.last_stop

    def end_reply(self, result: RunResult) -> bytes:
        """How a run that ended outside a resume (a signal, a kill) is told to gdb."""
        if result.status == RunStatus.INTERRUPTED:
            return b"X%02x" % (result.signal or SIGINT)
        return b"X09"

    # --- dispatch -----------------------------------------------------------------
    def handle(self, payload: bytes) -> Action:
        """The reply to one packet (b"" is "unsupported"), or an action for the server.
        Never raises for bad input: a malformed packet gets an ``E`` reply."""
        try:
            return self._dispatch(payload)
        except (rsp.RspError, RegisterError, DebugError, ValueError, IndexError) as e:
            self.log(f"gdb: {payload[:60]!r}: {e}")
            return E_BADARG if not isinstance(e, DebugError) else E_FAULT
        except PyvmmError as e:  # a guest memory error, a KVM refusal
            self.log(f"gdb: {payload[:60]!r}: {e}")
            return E_FAULT

    def _dispatch(self, p: bytes) -> Action:
        if not p:
            return b""
        cmd, rest = p[:1], p[1:]
        if p == b"?":
            return self.last_stop
        if cmd == b"q" or cmd == b"Q":
            return self._query(p)
        if cmd == b"H":
            return self._set_thread(rest)
        if cmd == b"T":
            return b"OK" if self._tid(rest) is not None else b"E01"
        if cmd == b"g":
            return self.dbg.registers(self.thread).encode_all().hex().encode()
        if cmd == b"G":
            self.dbg.registers(self.thread).set_all(rsp.hex_bytes(rest))
            return b"OK"
        if cmd == b"p":
            n = rsp.hex_int(rest)
            if n >= len(LAYOUT):
                return E_BADARG
            return self.dbg.registers(self.thread).encode(n).hex().encode()
        if cmd == b"P":
            num, _, value = rest.partition(b"=")
            self.dbg.registers(self.thread).set(rsp.hex_int(num), rsp.hex_bytes(value))
            return b"OK"
        if cmd == b"m":
            addr, length = self._addr_len(rest)
            return self.dbg.read_memory(addr, min(length, MAX_MEMORY), self.thread).hex().encode()
        if cmd in (b"M", b"X"):
            head, sep, data = rest.partition(b":")
            if not sep:
                return E_BADARG
            addr, length = self._addr_len(head)
            raw = rsp.hex_bytes(data) if cmd == b"M" else data
            if len(raw) != length:
                return E_BADARG
            if length:
                self.dbg.write_memory(addr, raw, self.thread)
            return b"OK"
        if cmd in (b"Z", b"z"):
            return self._breakpoint(cmd == b"Z", rest)
        if cmd in (b"c", b"s", b"C", b"S"):
            return self._resume_legacy(cmd, rest)
        if p.startswith(b"vCont"):
            return self._vcont(p)
        if p == b"vMustReplyEmpty":
            return b""
        if p.startswith(b"vKill"):
            return Kill()
        if cmd == b"k":
            return Kill()
        if cmd == b"D":
            return Detach()
        return b""

    def _query(self, p: bytes) -> Action:
        if p.startswith(b"qSupported"):
            _, _, theirs = p.partition(b":")
            self._gdb_features = {f.decode("ascii", "replace") for f in theirs.split(b";") if f}
            return (b"PacketSize=%x;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
                    b"vContSupported+" % rsp.MAX_PACKET)
        if p == b"QStartNoAckMode":
            self.no_ack = True
            return b"OK"
        if p.startswith(b"qXfer:features:read:"):
            annex, _, span = p[len(b"qXfer:features:read:"):].partition(b":")
            if annex != b"target.xml":
                return b"E00"
            off, length = self._addr_len(span)
            doc = target_xml()
            chunk = doc[off:off + min(length, MAX_MEMORY)]
            return (b"l" if off + len(chunk) >= len(doc) else b"m") + rsp.escape(chunk)
        if p == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % (i + 1) for i in range(self.ncpus))
        if p == b"qsThreadInfo":
            return b"l"
        if p == b"qC":
            return b"QC%x" % (self.thread + 1)
        if p == b"qAttached":
            return b"1"
        if p.startswith(b"qThreadExtraInfo,"):
            tid = self._tid(p.split(b",", 1)[1])
            if tid is None:
                return b"E01"
            return f"vCPU {tid}".encode().hex().encode()
        return b""

    def _tid(self, text: bytes) -> int | None:
        """A gdb thread id (hex, > 0) as a vCPU index, or None if there is no such vCPU."""
        if text.startswith(b"p"):  # multiprocess form p<pid>.<tid>
            text = text.partition(b".")[2]
        n = rsp.hex_int(text)
        return n - 1 if 1 <= n <= self.ncpus else None

    def _set_thread(self, rest: bytes) -> bytes:
        which, tid = rest[:1], rest[1:]
        if which not in (b"g", b"c"):
            return E_BADARG
        if tid in (b"-1", b"0", b""):
            return b"OK"
        v = self._tid(tid)
        if v is None:
            return b"E01"
        if which == b"g":
            self.thread = v
        return b"OK"

    @staticmethod
    def _addr_len(text: bytes) -> tuple[int, int]:
        addr, sep, length = text.partition(b",")
        if not sep:
            raise rsp.RspError("expected ADDR,LENGTH")
        return rsp.hex_u64(addr), rsp.hex_u64(length)

    def _breakpoint(self, insert: bool, rest: bytes) -> bytes:
        fields = rest.split(b";", 1)[0].split(b",")
        if len(fields) != 3:
            return E_BADARG
        ztype, addr, kind = rsp.hex_u64(fields[0]), rsp.hex_u64(fields[1]), rsp.hex_u64(fields[2])
        d = self.dbg
        try:
            if ztype == Z_SW:
                hardware = not d.software_breakpoints
                if insert:
                    d.add_breakpoint(addr, hardware=hardware)
                    if hardware:
                        self._z0_hardware.add(addr)
                else:
                    d.remove_breakpoint(addr, hardware=hardware)
                    self._z0_hardware.discard(addr)
            elif ztype == Z_HW:
                if insert:
                    d.add_breakpoint(addr, hardware=True)
                else:
                    d.remove_breakpoint(addr, hardware=True)
            elif ztype in _WATCH:
                if ztype != Z_WRITE and self.dbg.watchpoints_emulated():
                    return b""  # x86 cannot emulate a read watch by comparing values
                if insert:
                    d.add_watchpoint(addr, kind, _WATCH[ztype])
                else:
                    d.remove_watchpoint(addr, kind, _WATCH[ztype])
            else:
                return b""
        except DebugError as e:
            self.log(f"gdb: breakpoint at {addr:#x}: {e}")
            return E_NOSPC if "in use" in str(e) else E_FAULT
        return b"OK"

    def _resume_legacy(self, cmd: bytes, rest: bytes) -> Action:
        if cmd in (b"C", b"S"):
            rest = rest.partition(b";")[2]  # the signal is not delivered to a guest
        if rest:
            self.dbg.set_regs(self.thread, rip=rsp.hex_u64(rest))
        return Resume(self.thread if cmd in (b"s", b"S") else None)

    def _vcont(self, p: bytes) -> Action:
        if p == b"vCont?":
            return b"vCont;c;C;s;S"
        if not p.startswith(b"vCont;"):
            return b""
        step: int | None = None
        cont = False
        for action in p[len(b"vCont;"):].split(b";"):
            verb, _, tid = action.partition(b":")
            if verb[:1] in (b"s", b"S"):
                if step is None:
                    v = self.thread if not tid or tid == b"-1" else self._tid(tid)
                    if v is None:
                        return b"E01"
                    step = v
            elif verb[:1] in (b"c", b"C"):
                cont = True
            else:
                return E_BADARG  # t (stop) and r (range step) are not supported
        if step is None and not cont:
            return E_BADARG
        return Resume(step)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (localhost, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); host defaults to localhost.  ConfigError if bad."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host = "localhost"
    host = host.strip("[]") or "localhost"
    try:
        n = int(port, 10)
    except ValueError:
        raise ConfigError(f"--gdb wants [HOST:]PORT, not {text!r}") from None
    if not 0 <= n <= 65535:
        raise ConfigError(f"port {n} is not 0-65535")
    return host, n


class GdbServer:
    """Listens for gdb on ``host:port`` and runs the machine's guest under it.

    ``allow_remote`` must be True for an address that is not loopback.  What the host can
    do (software breakpoints, data watchpoints) is set on the debugger beforehand.
    """

    def __init__(self, debugger: Debugger, host: str = "localhost", port: int = 1234, *,
                 allow_remote: bool = False, log: Callable[[str], None] = lambda line: None) -> None:
        if not is_loopback(host) and not allow_remote:
            raise ConfigError(f"the gdb stub would listen on {host}, which is not loopback: "
                              "anyone who reaches it controls the guest; add --gdb-allow-remote "
                              "to do it anyway")
        self.dbg = debugger
        self.log = log
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ConfigError(f"cannot resolve {host}: {e.strerror}") from None
        family, _, _, _, addr = infos[0]
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(addr)
            self._listener.listen(1)
        except OSError as e:
            self._listener.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {e.strerror}") from None
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._incoming: queue.Queue[socket.socket] = queue.Queue()
        self._acceptor: threading.Thread | None = None
        self._closed = False

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        while not self._incoming.empty():
            self._incoming.get().close()

    def _accept_in_background(self) -> None:
        """While the guest runs freely, a connecting gdb pauses it."""
        if self._acceptor is not None and self._acceptor.is_alive():
            return

        def accept() -> None:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._incoming.put(conn)
            self.dbg.pause()

        self._acceptor = threading.Thread(target=accept, name="gdb-accept", daemon=True)
        self._acceptor.start()

    def serve(self, *, wait: bool = True, timeout: float | None = None) -> RunResult:
        """Run the guest to its end under the debugger: first wait for gdb (``wait``),
        or run until one attaches.  ``timeout`` counts seconds the guest runs, not the time
        it sits stopped in the debugger.  Returns the run's final result."""
        left = timeout
        conn: socket.socket | None = None
        try:
            if wait:
                conn, _ = self._listener.accept()
            while True:
                if conn is None:
                    self._accept_in_background()
                    result = self.dbg.machine.run(left)
                    left = None if left is None else max(0.0, left - result.duration)
                    if not self._incoming.empty() and result.status == RunStatus.STOPPED:
                        conn = self._incoming.get()
                        continue
                    if result.status == RunStatus.STOPPED:
                        continue  # a pause with nobody attached (a gdb that left at once)
                    return result
                ended, left = self._session(conn, left)
                conn.close()
                conn = None
                if ended is not None:
                    return ended
        except (KeyboardInterrupt, Interrupted) as e:
            signum = e.signum if isinstance(e, Interrupted) else SIGINT
            name = e.name if isinstance(e, Interrupted) else "SIGINT"
            if conn is not None:
                self._send(conn, rsp.frame(b"X%02x" % signum))
                conn.close()
            return RunResult(RunStatus.INTERRUPTED, None, message=f"interrupted ({name})",
                             signal=signum)
        finally:
            self.close()

    @staticmethod
    def _send(conn: socket.socket, data: bytes) -> bool:
        try:
            conn.sendall(data)
            return True
        except OSError:
            return False

    def _session(self, conn: socket.socket, left: float | None
                 ) -> tuple[RunResult | None, float | None]:
        """One attached gdb: ``(final result or None after a detach, seconds left)``."""
        proto = GdbProtocol(self.dbg, log=self.log)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link = _Link(conn, self.dbg.pause)
        try:
            return self._serve_link(proto, link, conn, left)
        finally:
            link.close()

    def _serve_link(self, proto: GdbProtocol, link: _Link, conn: socket.socket,
                    left: float | None) -> tuple[RunResult | None, float | None]:
        last = b""
        while True:
            item = link.next_item()
            if item is None:  # gdb went away: as a detach, the guest runs on
                self.log("gdb: connection closed; the guest runs on")
                self.dbg.detach()
                return None, left
            if isinstance(item, rsp.Malformed):
                self.log(f"gdb: {item.why}")
                if not proto.no_ack:
                    self._send(conn, b"-")
                continue
            if isinstance(item, rsp.Ack):
                if not item.ok and last:
                    self._send(conn, last)
                continue
            assert isinstance(item, rsp.Packet)
            if not proto.no_ack:
                self._send(conn, b"+")
            action = proto.handle(item.payload)
            if isinstance(action, Resume):
                link.running(True)
                try:
                    stop = (self.dbg.step(action.step, left) if action.step is not None
                            else self.dbg.cont(left))
                finally:
                    link.running(False)
                if link.dropped:
                    self.log(f"gdb: {link.dropped} packets sent while the guest ran were dropped")
                    link.dropped = 0
                left = None if left is None else max(0.0, left - stop.result.duration)
                if stop.reason == "timeout":
                    self._send(conn, rsp.frame(b"X%02x" % stop.signal))
                    return stop.result, left
                if stop.reason == "interrupted":
                    self._send(conn, rsp.frame(proto.end_reply(stop.result)))
                    return stop.result, left
                last = rsp.frame(proto.stop_reply(stop))
                self._send(conn, last)
                if stop.ended:
                    return stop.result, left
                continue
            if isinstance(action, Detach):
                self._send(conn, rsp.frame(b"OK"))
                self.dbg.detach()
                return None, left
            if isinstance(action, Kill):
                self._send(conn, rsp.frame(b"OK"))
                return RunResult(RunStatus.INTERRUPTED, None, message="killed by the debugger",
                                 signal=SIGKILL), left
            last = rsp.frame(action)
            self._send(conn, last)


class _Link:
    """The socket of one gdb connection.  While the guest is stopped the stub's own thread
    reads packets from it (one recv at a time, only when the last is used up: a client
    that sends faster than the stub answers is held back by TCP); while the guest runs a
    watcher thread reads it instead, so a Ctrl-C (0x03) pauses the guest and anything else
    waits for the stop, at most MAX_PENDING packets of it."""

    def __init__(self, conn: socket.socket, pause: Callable[[], None]) -> None:
        self.conn = conn
        self.pause = pause
        self.parser = rsp.PacketReader()
        self.pending: collections.deque[rsp.Item | None] = collections.deque()
        #: packets dropped while the guest ran because MAX_PENDING were already waiting
        self.dropped = 0
        self._lock = threading.Lock()
        self._running = False
        self._wake = threading.Event()
        self._closed = False
        threading.Thread(target=self._watch, name="gdb-watch", daemon=True).start()

    def next_item(self) -> rsp.Item | None:
        """The next packet, ack or malformed input; None when gdb closed the connection."""
        while not self.pending:
            try:
                data = self.conn.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._closed = True
                self._wake.set()
                return None
            self.pending.extend(i for i in self.parser.feed(data) if not isinstance(i, rsp.Interrupt))
        return self.pending.popleft()

    def close(self) -> None:
        """End the watcher thread (the socket is the server's to close)."""
        self._closed = True
        self._wake.set()

    def running(self, on: bool) -> None:
        with self._lock:
            self._running = on
        if on:
            self._wake.set()

    def _watch(self) -> None:
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            while not self._closed:
                readable, _, _ = select.select([self.conn], [], [], 0.05)
                with self._lock:
                    if not self._running:
                        break
                    if not readable:
                        continue
                    try:  # never blocking: the stub's thread may have read it meanwhile
                        data = self.conn.recv(65536, socket.MSG_DONTWAIT)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:  # gdb left while the guest ran: stop, then detach
                        self.pending.append(None)
                        self.pause()
                        self._closed = True
                        break
                    for item in self.parser.feed(data):
                        if isinstance(item, rsp.Interrupt):
                            self.pause()
                        elif len(self.pending) < MAX_PENDING:
                            self.pending.append(item)
                        else:
                            self.dropped += 1


__all__ = ["Detach", "GdbProtocol", "GdbServer", "Kill", "Resume", "parse_address"]
