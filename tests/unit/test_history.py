"""Bounded history: serial output and guest events keep a tail and count the rest."""

from pyvmm.devices.ucall import GuestEvent
from pyvmm.vstate.history import EventLog, SerialLog


def test_serial_log_streams_everything_and_keeps_a_tail():
    sink = []
    log = SerialLog(8, sink.append)
    mark = log.total
    for chunk in (b"hello ", b"world", b"!" * 20):
        log.write(chunk)
    kept, dropped = log.since(mark)
    assert b"".join(sink) == b"hello world" + b"!" * 20
    assert kept == b"!" * 8 and dropped == 31 - 8


def test_serial_log_with_no_history():
    log = SerialLog(0)
    log.write(b"x" * 100)
    assert log.since(0) == (b"", 100)


def test_event_log_bounds_and_reader():
    log = EventLog(3)
    for i in range(5):
        log.append(GuestEvent("sync", 0, (1, i)))
    kept, dropped = log.since(0)
    assert [e.args[1] for e in kept] == [2, 3, 4] and dropped == 2
    # a reader that fell behind gets the oldest still kept, then the rest in order
    assert [log.next(0).args[1] for _ in range(3)] == [2, 3, 4]
    assert log.next(0.01) is None
    kept, dropped = log.since(4)
    assert [e.args[1] for e in kept] == [4] and dropped == 0
