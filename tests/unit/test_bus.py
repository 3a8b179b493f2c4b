import pytest

from pyvmm.devices.base import HOST, Device
from pyvmm.devices.bus import Bus, BusError, GuestStop, Space, UnclaimedIoError
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.uart import LCR_DLAB, Uart16550


class Reg(Device):
    def __init__(self, name="reg"):
        self.name = name
        self.writes = []

    def read(self, addr, size, ctx):
        return 0x1122334455667788

    def write(self, addr, size, value, ctx):
        self.writes.append((addr, size, value))


def test_dispatch_and_masking():
    bus = Bus()
    dev = Reg()
    bus.register(Space.PIO, 0x100, 4, dev)
    assert bus.read(Space.PIO, 0x102, 2) == 0x7788
    bus.write(Space.PIO, 0x103, 1, 5)
    assert dev.writes == [(3, 1, 5)]  # the device gets the offset into its range


def test_devices_declare_their_own_ranges():
    from pyvmm.devices.post import PostPort

    bus = Bus()
    out = []
    bus.attach(Uart16550(out.append))
    bus.attach(DebugExit())
    bus.attach(PostPort())
    assert bus.claimed(Space.PIO) == [(0x80, 1), (0xF4, 4), (0x3F8, 8)]
    bus.write(Space.PIO, 0x3F8, 1, ord("x"))  # THR at offset 0 of the UART's range
    assert out == [b"x"]
    assert Device().ranges() == []  # placed by its user (Machine.add_device)


def test_overlap_refused_and_spaces_apart():
    bus = Bus()
    bus.register(Space.PIO, 0x100, 8, Reg("a"))
    with pytest.raises(BusError, match="overlaps a"):
        bus.register(Space.PIO, 0x107, 2, Reg("b"))
    bus.register(Space.MMIO, 0x100, 8, Reg("c"))  # other space: fine
    with pytest.raises(BusError):
        bus.register(Space.PIO, 0xFFFF, 2, Reg("d"))  # past the 64 KiB port space
    with pytest.raises(BusError):
        bus.register(Space.PIO, 0x200, 0, Reg("e"))


def test_access_straddling_a_device_end_is_unclaimed():
    bus = Bus()
    bus.register(Space.PIO, 0x100, 2, Reg())
    assert bus.read(Space.PIO, 0x101, 2) == 0xFFFF
    assert bus.unclaimed_summary() == ["port 0x101: 1"]


def test_unclaimed_lax_counts_strict_raises():
    bus = Bus()
    assert bus.read(Space.MMIO, 0xD0000000, 4) == 0xFFFFFFFF
    bus.write(Space.MMIO, 0xD0000000, 4, 1)
    assert bus.unclaimed[(Space.MMIO, 0xD0000000)] == 2
    strict = Bus(strict=True)
    with pytest.raises(UnclaimedIoError, match="port 0x2f0"):
        strict.read(Space.PIO, 0x2F0, 1)


def test_debug_exit_raises_stop():
    bus = Bus()
    bus.register(Space.PIO, 0xF4, 4, DebugExit())
    with pytest.raises(GuestStop) as e:
        bus.write(Space.PIO, 0xF4, 2, 0x1234)
    assert e.value.code == 0x1234


def test_uart_dlab_switches_fast_path_off():
    out = []
    u = Uart16550(out.append)
    changes = []
    u.on_fast_change = lambda fe: changes.append(fe.enabled)
    u.write(0, 1, ord("A"), HOST)
    u.write(3, 1, LCR_DLAB | 3, HOST)
    u.write(0, 1, 12, HOST)  # divisor latch, not output
    assert u.read(0, 1, HOST) == 12
    u.write(3, 1, 3, HOST)
    assert out == [b"A"]
    assert changes == [False, True]
    assert u.read(5, 1, HOST) & 0x60 == 0x60
