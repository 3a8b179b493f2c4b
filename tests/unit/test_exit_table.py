"""The C fast exit table, driven with a fake kvm_run (no KVM needed)."""

import pytest

from pyvmm._native import ffi, lib
from pyvmm.devices.fastpath import READ, WRITE, Action, Space

HANDLED = -1
_KEEP: list = []  # cffi memory the fake kvm_run points into


@pytest.fixture
def loop():
    size = 3 * 4096
    mem = ffi.new("uint8_t[]", size)
    buf = ffi.new("uint8_t[]", 64)
    l = ffi.new("struct pyvmm_loop *")  # noqa: E741
    l.run = ffi.cast("struct kvm_run *", mem)
    l.run_size = size
    l.buf, l.buf_cap, l.buf_flush_at, l.buf_flush_newline = buf, 64, 48, 1
    _KEEP.append((mem, buf))
    return l


def add(l, space, base, length, dirs, action, read_value=0):  # noqa: E741
    e = l.entries[l.n_entries]
    e.space, e.base, e.len, e.dirs, e.action = int(space), base, length, dirs, int(action)
    e.read_value, e.enabled = read_value, 1
    l.n_entries += 1
    return e


def pio(l, port, data: bytes, size=1, out=True):  # noqa: E741
    l.run.exit_reason = lib.KVM_EXIT_IO
    io = lib.pyvmm_run_io(l.run)
    io.direction = lib.KVM_EXIT_IO_OUT if out else lib.KVM_EXIT_IO_IN
    io.size, io.port, io.count, io.data_offset = size, port, len(data) // size, 4096
    ffi.memmove(ffi.cast("uint8_t *", l.run) + 4096, data, len(data))
    return lib.pyvmm_loop_dispatch(l)


def test_buffer_collects_and_flushes_on_newline(loop):
    add(loop, Space.PIO, 0x3F8, 1, WRITE, Action.BUFFER)
    assert pio(loop, 0x3F8, b"h") == HANDLED
    assert pio(loop, 0x3F8, b"i\n", size=1) == lib.PYVMM_RET_BUFFER  # rep outsb, count 2
    assert bytes(ffi.buffer(loop.buf, loop.buf_len)) == b"hi\n"


def test_sink_read_fills_every_element(loop):
    add(loop, Space.PIO, 0x3FD, 1, READ, Action.SINK, read_value=0x60)
    assert pio(loop, 0x3FD, b"\0\0\0", out=False) == HANDLED
    assert bytes(ffi.buffer(ffi.cast("uint8_t *", loop.run) + 4096, 3)) == b"\x60\x60\x60"


def test_stop_carries_value_and_entry(loop):
    add(loop, Space.PIO, 0x80, 1, WRITE, Action.COUNTER)
    e = add(loop, Space.PIO, 0xF4, 4, WRITE, Action.STOP)
    assert pio(loop, 0xF4, (0x2A).to_bytes(4, "little"), size=4) == lib.PYVMM_RET_STOP
    assert loop.stop_value == 0x2A and loop.stop_entry == 1 and e.hits == 1


def test_direction_range_and_disabled_entries_fall_back(loop):
    e = add(loop, Space.PIO, 0x3F8, 1, WRITE, Action.BUFFER)
    assert pio(loop, 0x3F8, b"\0", out=False) == lib.PYVMM_RET_EXIT  # read: not covered
    assert pio(loop, 0x3F9, b"x") == lib.PYVMM_RET_EXIT  # next port
    assert pio(loop, 0x3F8, b"xy", size=2) == lib.PYVMM_RET_EXIT  # wider than the entry
    e.enabled = 0
    assert pio(loop, 0x3F8, b"x") == lib.PYVMM_RET_EXIT


def test_bad_data_window_goes_to_python(loop):
    add(loop, Space.PIO, 0x80, 1, WRITE, Action.COUNTER)
    loop.run.exit_reason = lib.KVM_EXIT_IO
    io = lib.pyvmm_run_io(loop.run)
    io.direction, io.size, io.port, io.count = lib.KVM_EXIT_IO_OUT, 1, 0x80, 10
    io.data_offset = loop.run_size - 4  # 10 bytes would run past the mapping
    assert lib.pyvmm_loop_dispatch(loop) == lib.PYVMM_RET_EXIT


def test_counter_keeps_last_value_and_mmio(loop):
    c = add(loop, Space.PIO, 0x80, 1, READ | WRITE, Action.COUNTER, read_value=0xFF)
    for v in (1, 2, 3):
        assert pio(loop, 0x80, bytes([v])) == HANDLED
    assert c.hits == 3 and c.last_value == 3
    m = add(loop, Space.MMIO, 0xD0000000, 0x1000, READ, Action.SINK, read_value=0xAABBCCDD)
    loop.run.exit_reason = lib.KVM_EXIT_MMIO
    mm = lib.pyvmm_run_mmio(loop.run)
    mm.phys_addr, mm.len, mm.is_write = 0xD0000FFC, 4, 0
    assert lib.pyvmm_loop_dispatch(loop) == HANDLED
    assert bytes(ffi.buffer(mm.data))[:4] == bytes.fromhex("ddccbbaa") and m.hits == 1
    mm.phys_addr = 0xD0000FFE  # crosses the end of the range
    assert lib.pyvmm_loop_dispatch(loop) == lib.PYVMM_RET_EXIT


def test_clock_entry_counts_host_time_at_its_rate(loop):
    """The ACPI PM timer in C: ticks of CLOCK_MONOTONIC since read_value at clock_hz,
    masked to the counter's width; a narrower read at an offset gets the upper bytes."""
    import time

    e = add(loop, Space.PIO, 0x608, 4, READ, Action.CLOCK, read_value=time.monotonic_ns() - 10**9)
    e.clock_hz, e.clock_mask = 3_579_545, 0xFFFFFFFF

    def read(port, size):
        assert pio(loop, port, bytes(size), size=size, out=False) == HANDLED
        return int.from_bytes(bytes(ffi.buffer(ffi.cast("uint8_t *", loop.run) + 4096, size)), "little")

    a = read(0x608, 4)
    time.sleep(0.01)
    b = read(0x608, 4)
    assert 3_579_545 <= a < 3_579_545 * 2  # one second since the base, read at most a second later
    assert 3_579 * 9 < b - a < 3_579_545  # ~10 ms later
    lo = read(0x608, 4) >> 16
    upper = read(0x60A, 2)
    assert lo <= upper <= read(0x608, 4) >> 16  # the upper half, read alone
    e.clock_mask = 0xFFFFFF  # a 24-bit PM timer
    assert all(read(0x608, 4) <= 0xFFFFFF for _ in range(20))
    # the base may be the far past: no overflow in ns * hz (128-bit intermediate)
    e.read_value, e.clock_mask = 0, (1 << 64) - 1
    before = time.monotonic_ns() * 3_579_545 // 10**9
    big = read(0x608, 4)
    after = time.monotonic_ns() * 3_579_545 // 10**9
    assert (before & 0xFFFFFFFF) <= big <= (after & 0xFFFFFFFF) or (after >> 32) != (before >> 32)
