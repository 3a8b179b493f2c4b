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


class Ports(Reg):
    """A device that declares its own ranges, with a fast entry of its own."""

    def __init__(self, name, *ranges):
        super().__init__(name)
        self._ranges = list(ranges)
        from pyvmm.devices.fastpath import WRITE, Action, FastEntry

        self.entry = FastEntry(Space.PIO, ranges[0][1], ranges[0][2], WRITE, Action.SINK, self)

    def ranges(self):
        return self._ranges

    def fast_entries(self):
        return [self.entry]


def _board(tag=""):
    return [Ports(f"a{tag}", (Space.PIO, 0x300, 4)), Ports(f"b{tag}", (Space.PIO, 0x100, 2),
                                                           (Space.MMIO, 0x1000, 16)),
            Ports(f"c{tag}", (Space.PIO, 0x200, 8))]


def test_attach_devices_on_empty_buses_takes_the_same_layout_with_its_own_devices():
    # the second empty bus takes the first one's sorted layout (a cache): it must hold
    # its own devices, their fast entries, and refuse overlaps exactly as the first
    first, second = Bus(), Bus()
    one, two = _board("1"), _board("2")
    assert first.attach_devices(one) == [d.entry for d in one]
    assert second.attach_devices(two) == [d.entry for d in two]
    for bus, devs in ((first, one), (second, two)):
        assert bus.claimed(Space.PIO) == [(0x100, 2), (0x200, 8), (0x300, 4)]
        assert bus.claims(Space.MMIO) == ((0x1000, 16),)
        assert bus.find(Space.PIO, 0x201) is devs[2]
        assert bus.find(Space.MMIO, 0x100F) is devs[1]
        assert bus.fast_entries == [d.entry for d in devs]
        assert [d for _, d in bus.devices()] == [devs[0], devs[1], devs[2]]
    with pytest.raises(BusError, match="late: PIO 0x201-0x201 overlaps c2 at 0x200-0x207"):
        second.register(Space.PIO, 0x201, 1, Reg("late"))
    bus = Bus()  # another device set (other ports) is laid out afresh
    moved = [Ports("x", (Space.PIO, 0x300, 4)), Ports("y", (Space.PIO, 0x500, 1))]
    bus.attach_devices(moved)
    assert bus.claimed(Space.PIO) == [(0x300, 4), (0x500, 1)]
    closed = []
    for d in two:
        d.close = lambda d=d: closed.append(d.name)
    second.close()
    assert closed == ["a2", "b2", "c2"]  # each device once, in the order attached


def test_attach_all_is_all_or_none():
    bus = Bus()
    bus.register(Space.PIO, 0x100, 8, Reg("old"))
    with pytest.raises(BusError, match="new: PIO 0x104-0x104 overlaps old at 0x100-0x107"):
        bus.attach_all([(Space.PIO, 0x200, 1, Reg("fine")), (Space.PIO, 0x104, 1, Reg("new"))])
    with pytest.raises(BusError, match="overlaps"):  # two new ones against each other
        bus.attach_all([(Space.PIO, 0x300, 4, Reg("p")), (Space.PIO, 0x302, 4, Reg("q"))])
    with pytest.raises(BusError, match="empty range"):
        bus.attach_all([(Space.PIO, 0x400, 1, Reg("r")), (Space.PIO, 0x500, 0, Reg("s"))])
    # a range inside a long one, past a short one between: still an overlap
    with pytest.raises(BusError, match="inner: PIO 0x10a-0x10a"):
        bus.attach_all([(Space.PIO, 0x109, 0x20, Reg("long")), (Space.PIO, 0x10A, 1, Reg("inner"))])
    assert bus.claimed(Space.PIO) == [(0x100, 8)]  # nothing of the refused ones
    assert bus.find(Space.PIO, 0x200) is None and bus.fast_entries == []
    # the same device at a second range later: its entries are not added twice
    dev = Ports("twice", (Space.PIO, 0x600, 1))
    assert bus.attach(dev) == [dev.entry]
    assert bus.register(Space.PIO, 0x700, 1, dev) == []
    assert bus.fast_entries == [dev.entry]


class NoRange(Device):
    """A device placed by its user: no ranges of its own, one fast entry."""

    def __init__(self, name):
        self.name = name
        from pyvmm.devices.fastpath import WRITE, Action, FastEntry

        self.entry = FastEntry(Space.PIO, 0x80, 1, WRITE, Action.SINK, self)
        self.closed = 0

    def fast_entries(self):
        return [self.entry]

    def close(self):
        self.closed += 1


def test_a_device_without_ranges_is_left_off_every_empty_bus_alike():
    # (review: the layout cache put it on the second empty bus, not the first)
    answers = []
    for name in ("first", "second"):
        dev, bus = NoRange(name), Bus()
        answers.append((len(bus.attach(dev)), len(bus.fast_entries)))
        bus.close()
        answers[-1] += (dev.closed,)
    assert answers[0] == answers[1] == (0, 0, 0)
    Bus().attach_devices((NoRange("p"), NoRange("q")))
    x, bus = NoRange("x"), Bus()
    bus.attach_devices((x, x))
    bus.close()
    assert x.closed == 0 and bus.fast_entries == []


def test_ranges_given_as_lists_still_attach():
    class Listed(Device):
        name = "listed"

        def ranges(self):
            return [[Space.PIO, 0x500, 2]]

    for _ in range(2):  # not kept as a layout (a list is no key), and no TypeError either
        bus = Bus()
        bus.attach(Listed())
        assert bus.claimed(Space.PIO) == [(0x500, 2)]


def test_closing_one_bus_leaves_a_shared_device_and_its_entries_alone():
    dev = Ports("shared", (Space.PIO, 0x600, 1))
    one, two = Bus(), Bus()
    one.register(Space.PIO, 0x600, 1, dev)
    two.register(Space.PIO, 0x600, 1, dev)
    one.close()
    assert two.fast_entries[0].owner is dev


def test_the_machine_s_own_devices_let_go_of_their_entries_when_closed():
    from pyvmm.devices.post import PostPort

    uart, post = Uart16550(lambda b: None), PostPort()
    entries = uart.fast_entries() + post.fast_entries()
    uart.close()
    post.close()
    assert {fe.owner.name for fe in entries} == {"closed"}  # no cycle left to collect


def test_two_new_overlapping_claims_name_the_later_one():
    bus = Bus()
    with pytest.raises(BusError, match="B: PIO 0xf0-0x10f overlaps A at 0x100-0x107"):
        bus.attach_all([(Space.PIO, 0x100, 8, Reg("A")), (Space.PIO, 0xF0, 0x20, Reg("B"))])


def test_an_entry_two_devices_share_is_listed_once_on_every_empty_bus():
    # (review: the layout cache's path listed it twice on later empty buses)
    from pyvmm.devices.fastpath import WRITE, Action, FastEntry

    class Half(Device):
        def __init__(self, name, base, entry):
            self.name, self.base, self.entry = name, base, entry

        def ranges(self):
            return [(Space.PIO, self.base, 1)]

        def fast_entries(self):
            return [self.entry]

    counts = []
    for _ in range(2):
        shared = FastEntry(Space.PIO, 0x7770, 2, WRITE, Action.SINK, None)
        bus = Bus()
        bus.attach_devices((Half("a", 0x7770, shared), Half("b", 0x7771, shared)))
        counts.append(len(bus.fast_entries))
    assert counts == [1, 1]
