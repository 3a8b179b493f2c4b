"""The GDB remote protocol's framing (pyvmm.debug.rsp): pure logic, hostile input."""

from __future__ import annotations

import random

import pytest

from pyvmm.debug import rsp


def items(*chunks: bytes) -> list[rsp.Item]:
    r = rsp.PacketReader()
    return [i for c in chunks for i in r.feed(c)]


def test_checksum_and_frame() -> None:
    assert rsp.frame(b"OK") == b"$OK#9a"
    assert rsp.frame(b"") == b"$#00"
    assert rsp.checksum(b"qSupported") == int(rsp.frame(b"qSupported")[-2:], 16)


def test_escapes_round_trip() -> None:
    data = bytes(range(256)) + b"#$}*"
    framed = rsp.frame(data)
    assert b"#" not in framed[1:-3] and b"$" not in framed[1:]
    assert items(framed) == [rsp.Packet(data)]


def test_packets_split_anywhere_acks_and_interrupts() -> None:
    wire = b"+" + rsp.frame(b"g") + b"-\x03" + rsp.frame(b"m100,4")
    for cut in range(len(wire) + 1):
        got = items(wire[:cut], wire[cut:])
        assert got == [rsp.Ack(True), rsp.Packet(b"g"), rsp.Ack(False), rsp.Interrupt(),
                       rsp.Packet(b"m100,4")], cut


def test_run_length_encoding_is_decoded() -> None:
    # "0* " is '0' repeated 3 more times (' ' = 32 = 29 + 3)
    body = b"0* "
    assert items(b"$" + body + b"#%02x" % rsp.checksum(body)) == [rsp.Packet(b"0000")]


@pytest.mark.parametrize("wire, why", [
    (b"$g#00", "checksum mismatch"),
    (b"$g#zz", "not hex"),
    (b"$" + b"a" * (rsp.MAX_PACKET + 10) + b"#00", "longer than"),
    (b"$}#%02x" % rsp.checksum(b"}"), "escape"),
    (b"$*#%02x" % rsp.checksum(b"*"), "nothing to repeat"),
    (b"$a*\x7f#%02x" % rsp.checksum(b"a*\x7f"), "bad run length"),
])
def test_malformed_input_is_an_item_not_an_exception(wire: bytes, why: str) -> None:
    got = items(wire)
    assert len(got) == 1 and isinstance(got[0], rsp.Malformed) and why in got[0].why, got
    # and the reader goes on afterwards
    assert items(wire, rsp.frame(b"?"))[-1] == rsp.Packet(b"?")


def test_noise_between_packets_is_skipped() -> None:
    assert items(b"junk\x00\xff" + rsp.frame(b"?") + b"more") == [rsp.Packet(b"?")]


def test_hex_fields_are_checked() -> None:
    assert rsp.hex_int(b"1f") == 31
    for bad in (b"", b"-1", b"0x10", b"g", b"1" * 33):
        with pytest.raises(rsp.RspError):
            rsp.hex_int(bad)
    assert rsp.hex_bytes(b"0aff") == b"\x0a\xff"
    for bad in (b"0", b"zz", b"\xff\xff"):
        with pytest.raises(rsp.RspError):
            rsp.hex_bytes(bad)


def test_seeded_fuzz_never_raises_and_stays_bounded() -> None:
    rnd = random.Random(1234)
    alphabet = b"$#}*+-\x03ab0123456789"
    for _ in range(300):
        reader = rsp.PacketReader()
        for _ in range(20):
            n = rnd.randrange(0, 400)
            data = bytes(rnd.choice(alphabet) if rnd.random() < 0.8 else rnd.randrange(256)
                         for _ in range(n))
            for item in reader.feed(data):
                assert isinstance(item, rsp.Packet | rsp.Ack | rsp.Interrupt | rsp.Malformed)
                if isinstance(item, rsp.Packet):
                    assert len(item.payload) <= rsp.MAX_PACKET
            assert len(reader._buf) <= rsp.MAX_PACKET + 3
