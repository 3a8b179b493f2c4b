import struct

import pytest

from pyvmm.kvm.stats import (
    TYPE_CUMULATIVE,
    TYPE_INSTANT,
    TYPE_LOG_HIST,
    StatsFormatError,
    StatsReader,
    delta,
    parse_descriptors,
    parse_values,
)

NAME = 48


def blob(stats):
    """A stats-fd image as KVM lays it out: header, id, descriptors, data."""
    id_off = 24
    desc_off = id_off + NAME
    desc_size = 16 + NAME
    data_off = desc_off + len(stats) * desc_size
    head = struct.pack("<6I", 0, NAME, len(stats), id_off, desc_off, data_off)
    ident = b"kvm-1/vcpu-0".ljust(NAME, b"\0")
    descs, data, off = b"", b"", 0
    for name, flags, values in stats:
        descs += struct.pack("<IhHII", flags, 0, len(values), off, 0) + name.encode().ljust(NAME, b"\0")
        data += struct.pack(f"<{len(values)}Q", *values)
        off += 8 * len(values)
    return head + ident + descs + data, data_off


STATS = [("exits", TYPE_CUMULATIVE, [10]), ("blocking", TYPE_INSTANT, [1]),
         ("halt_wait_hist", TYPE_LOG_HIST, [1, 2, 3])]


def test_parse_roundtrip():
    b, data_off = blob(STATS)
    ident, descs, off = parse_descriptors(b)
    assert ident == "kvm-1/vcpu-0" and off == data_off
    vals = parse_values(descs, b[off:])
    assert vals == {"exits": 10, "blocking": 1, "halt_wait_hist": (1, 2, 3)}


def test_reader_uses_pread_offsets():
    b, _ = blob(STATS)
    reader = StatsReader(7, reader=lambda fd, n, off: b[off:off + n])
    assert reader.id == "kvm-1/vcpu-0"
    assert reader.read()["halt_wait_hist"] == (1, 2, 3)
    assert reader.descriptors["exits"].cumulative
    assert not reader.descriptors["blocking"].cumulative


def test_delta_reports_only_what_moved():
    b, _ = blob(STATS)
    _, descs, _ = parse_descriptors(b)
    by_name = {d.name: d for d in descs}
    before = {"exits": 10, "blocking": 1, "halt_wait_hist": (1, 2, 3)}
    after = {"exits": 15, "blocking": 0, "halt_wait_hist": (1, 4, 3)}
    assert delta(by_name, before, after) == {"exits": 5, "blocking": 0, "halt_wait_hist": (0, 2, 0)}
    assert delta(by_name, before, before) == {}


@pytest.mark.parametrize("cut", [10, 40, 100])
def test_truncated_refused(cut):
    b, _ = blob(STATS)
    with pytest.raises(StatsFormatError):
        _, descs, off = parse_descriptors(b[:cut])
        parse_values(descs, b[off:off + 8])
