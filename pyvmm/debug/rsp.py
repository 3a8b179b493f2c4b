"""The GDB Remote Serial Protocol's framing: packets, checksums, escapes, acks.

A packet is ``$payload#cc``: ``cc`` is the sum of the payload's bytes modulo 256 in two
hex digits; ``#``, ``$``, ``}`` and ``*`` inside the payload are escaped as ``}`` followed
by the byte XOR 0x20, and ``X*n`` repeats ``X`` ``ord(n) - 29`` more times (run-length
encoding; gdb only sends it in replies, but it is decoded here all the same).  Outside
packets, ``+``/``-`` acknowledge and a lone 0x03 byte is an interrupt (Ctrl-C in gdb).

The client is untrusted (anyone who reaches the port): :class:`PacketReader` bounds the
packet size and turns every malformed input into a :class:`Malformed` item, never an
exception.  Pure logic; ``tests/unit/test_rsp.py`` covers it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

#: the largest payload we accept (and advertise as PacketSize): 16 KiB of hex is 8 KiB data
MAX_PACKET = 0x4000
INTERRUPT = 0x03
_ESCAPED = frozenset(b"#$}*")


def checksum(payload: bytes) -> int:
    """The modulo-256 sum the protocol puts after ``#``."""
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    """Escape the bytes a payload cannot carry as they are (binary data, e.g. ``X``)."""
    if not _ESCAPED.intersection(payload):
        return payload
    out = bytearray()
    for b in payload:
        if b in _ESCAPED:
            out += bytes((0x7D, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """``payload`` as a packet on the wire (escaped, with its checksum)."""
    body = escape(payload)
    return b"$" + body + b"#" + b"%02x" % checksum(body)


class RspError(ValueError):
    """A packet's payload cannot be decoded (a bad escape or run length)."""


def unescape(body: bytes) -> bytes:
    """Undo escapes and run-length encoding in a packet's body (checksum already checked)."""
    if b"}" not in body and b"*" not in body:
        return body
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        b = body[i]
        if b == 0x7D:
            if i + 1 >= n:
                raise RspError("packet ends in the middle of an escape")
            out.append(body[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A:
            if not out or i + 1 >= n:
                raise RspError("run-length marker with nothing to repeat")
            count = body[i + 1] - 29
            if count < 3 or count > 97 or len(out) + count > MAX_PACKET:
                raise RspError(f"bad run length {count}")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


@dataclass(frozen=True)
class Packet:
    """A well-formed packet's payload (escapes undone)."""

    payload: bytes


@dataclass(frozen=True)
class Ack:
    """``+`` (True) or ``-`` (False: resend the last packet)."""

    ok: bool


@dataclass(frozen=True)
class Interrupt:
    """A 0x03 byte between packets: pause the target."""


@dataclass(frozen=True)
class Malformed:
    """Input that is not a packet: a checksum mismatch, an oversized packet, a bad escape.
    ``why`` says which, for the stub's log; the stub answers with ``-`` and goes on."""

    why: str


Item = Packet | Ack | Interrupt | Malformed


class PacketReader:
    """Turns a byte stream into :data:`Item`s.  ``feed(data)`` yields what is complete;
    partial packets wait for more bytes.  At most :data:`MAX_PACKET` bytes are held."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_packet = False

    def feed(self, data: bytes) -> Iterator[Item]:
        for b in data:
            if not self._in_packet:
                if b == 0x24:  # $
                    self._in_packet = True
                    self._buf.clear()
                elif b == 0x2B:
                    yield Ack(True)
                elif b == 0x2D:
                    yield Ack(False)
                elif b == INTERRUPT:
                    yield Interrupt()
                # anything else between packets is noise: skipped, as gdbserver does
                continue
            self._buf.append(b)
            if len(self._buf) > MAX_PACKET + 3:
                self._in_packet = False
                self._buf.clear()
                yield Malformed(f"packet longer than {MAX_PACKET} bytes")
                continue
            if len(self._buf) >= 3 and self._buf[-3] == 0x23:  # '#' never occurs escaped
                yield self._finish()

    def _finish(self) -> Item:
        self._in_packet = False
        body, given = bytes(self._buf[:-3]), bytes(self._buf[-2:])
        self._buf.clear()
        try:
            want = int(given, 16)
        except ValueError:
            return Malformed(f"checksum {given!r} is not hex")
        if want != checksum(body):
            return Malformed(f"checksum mismatch ({given.decode('ascii', 'replace')} "
                             f"given, {checksum(body):02x} computed)")
        try:
            return Packet(unescape(body))
        except RspError as e:
            return Malformed(str(e))


def hex_int(text: bytes) -> int:
    """A hex number from a packet field; RspError for anything else (empty, sign, junk)."""
    if not text or len(text) > 32 or not all(c in b"0123456789abcdefABCDEF" for c in text):
        raise RspError(f"{text[:40]!r} is not a hex number")
    return int(text, 16)


def hex_u64(text: bytes) -> int:
    """A hex field that must fit in 64 bits (an address, a length, a register number):
    RspError beyond, so that no larger number reaches a debug register or an ioctl."""
    n = hex_int(text)
    if n >> 64:
        raise RspError(f"{text[:40]!r} does not fit in 64 bits")
    return n


def hex_bytes(text: bytes) -> bytes:
    """Bytes from hex pairs; RspError for an odd length or a non-hex digit."""
    try:
        return bytes.fromhex(text.decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise RspError(f"{text[:40]!r} is not hex data") from None
