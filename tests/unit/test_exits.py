"""Exit decoding as free functions, driven with a fake kvm_run (no KVM needed): every
field KVM hands over is checked before use, and each exit reason becomes the right
outcome."""

from __future__ import annotations

import pytest

from pyvmm._native import ffi, lib
from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.bus import Bus, GuestStop
from pyvmm.devices.fastpath import Space
from pyvmm.devices.msr import MsrHandlers
from pyvmm.errors import GuestIoError
from pyvmm.vstate.exits import handle_exit

SIZE = 3 * 4096
_KEEP: list = []
CTX = VcpuContext(0)


@pytest.fixture
def run():
    mem = ffi.new("uint8_t[]", SIZE)
    _KEEP.append(mem)
    return ffi.cast("struct kvm_run *", mem)


class Cell(Device):
    name = "cell"

    def __init__(self):
        self.writes = []

    def read(self, addr, size, ctx):
        return 0x1122334455667788

    def write(self, addr, size, value, ctx):
        if value == 0xDEAD:
            raise GuestStop(3, "debug-exit")
        if value == 0xBAD:
            raise GuestIoError("refused")
        self.writes.append((addr, size, value, ctx.vcpu))


def pio(run, port, data=b"", size=1, out=True, count=None, offset=4096):
    run.exit_reason = lib.KVM_EXIT_IO
    io = lib.pyvmm_run_io(run)
    io.direction = lib.KVM_EXIT_IO_OUT if out else lib.KVM_EXIT_IO_IN
    io.size, io.port, io.data_offset = size, port, offset
    io.count = count if count is not None else max(len(data) // size, 1)
    if data:
        ffi.memmove(ffi.cast("uint8_t *", run) + offset, data, len(data))


def bus_with(cell, space=Space.PIO, base=0x100, n=8):
    bus = Bus()
    bus.register(space, base, n, cell)
    return bus


def test_pio_out_and_string_in(run):
    cell = Cell()
    bus = bus_with(cell)
    pio(run, 0x100, (0x1234).to_bytes(2, "little") * 2, size=2)  # outsw, count 2
    assert handle_exit(run, SIZE, CTX, bus, MsrHandlers()) is None
    assert cell.writes == [(0, 2, 0x1234, 0), (0, 2, 0x1234, 0)]  # offsets into the range
    pio(run, 0x104, size=4, out=False, count=3)
    assert handle_exit(run, SIZE, CTX, bus, MsrHandlers()) is None
    data = bytes(ffi.buffer(ffi.cast("uint8_t *", run) + 4096, 12))
    assert data == (0x55667788).to_bytes(4, "little") * 3


@pytest.mark.parametrize("size, count, offset", [(3, 1, 4096), (1, 0, 4096), (4, 2, SIZE - 4),
                                                  (8, 1, 4096)])
def test_malformed_pio_is_a_crash_not_a_host_access(run, size, count, offset):
    pio(run, 0x100, size=size, count=count, offset=offset)
    out = handle_exit(run, SIZE, CTX, bus_with(Cell()), MsrHandlers())
    assert out.kind == "crash" and "malformed PIO exit" in out.reason


def test_device_stop_and_io_error_become_outcomes(run):
    bus = bus_with(Cell())
    pio(run, 0x100, (0xDEAD).to_bytes(4, "little"), size=4)
    out = handle_exit(run, SIZE, CTX, bus, MsrHandlers())
    assert (out.kind, out.code) == ("exit", 3)
    pio(run, 0x100, (0xBAD).to_bytes(4, "little"), size=4)
    out = handle_exit(run, SIZE, CTX, bus, MsrHandlers())
    assert out.kind == "io-error" and out.reason == "refused"


def test_mmio_read_write_and_bad_length(run):
    cell = Cell()
    bus = bus_with(cell, Space.MMIO, 0xD0000000, 0x1000)
    run.exit_reason = lib.KVM_EXIT_MMIO
    m = lib.pyvmm_run_mmio(run)
    m.phys_addr, m.len, m.is_write = 0xD0000010, 8, 0
    assert handle_exit(run, SIZE, CTX, bus, MsrHandlers()) is None
    assert bytes(ffi.buffer(m.data)) == (0x1122334455667788).to_bytes(8, "little")
    m.is_write, m.len = 1, 2
    ffi.memmove(m.data, b"\x34\x12", 2)
    assert handle_exit(run, SIZE, CTX, bus, MsrHandlers()) is None
    assert cell.writes == [(0x10, 2, 0x1234, 0)]
    m.len = 9
    assert handle_exit(run, SIZE, CTX, bus, MsrHandlers()).kind == "crash"


def test_msr_exits_reach_handlers_or_give_gp(run):
    msrs = MsrHandlers()
    seen = []
    msrs.add(0x1337, lambda: 0xABC, seen.append)
    msrs.add(0x1338, None, None)
    m = lib.pyvmm_run_msr(run)
    run.exit_reason, m.index = lib.KVM_EXIT_X86_RDMSR, 0x1337
    assert handle_exit(run, SIZE, CTX, Bus(), msrs) is None
    assert (m.error, m.data) == (0, 0xABC)
    run.exit_reason, m.data = lib.KVM_EXIT_X86_WRMSR, 7
    assert handle_exit(run, SIZE, CTX, Bus(), msrs) is None and seen == [7] and m.error == 0
    m.index = 0x1338
    handle_exit(run, SIZE, CTX, Bus(), msrs)
    assert m.error == 1  # no write handler: #GP in the guest


@pytest.mark.parametrize("reason, kind, words", [
    ("SHUTDOWN", "crash", "triple fault"),
    ("HLT", "crash", "no way to wake"),
    ("FAIL_ENTRY", "crash", "VM entry failed"),
    ("UNKNOWN", "crash", "unknown exit"),
    ("HYPERCALL", "crash", "KVM_EXIT_HYPERCALL"),
])
def test_terminal_exits(run, reason, kind, words):
    run.exit_reason = getattr(lib, f"KVM_EXIT_{reason}")
    out = handle_exit(run, SIZE, CTX, Bus(), MsrHandlers())
    assert out.kind == kind and words in out.reason


def test_internal_error_and_system_events(run):
    run.exit_reason = lib.KVM_EXIT_INTERNAL_ERROR
    ie = lib.pyvmm_run_internal(run)
    ie.suberror, ie.ndata, ie.data[0] = lib.KVM_INTERNAL_ERROR_EMULATION, 999, 5
    out = handle_exit(run, SIZE, CTX, Bus(), MsrHandlers())
    assert "emulation failure" in out.reason and len(out.details["data"]) == 16  # ndata capped
    run.exit_reason = lib.KVM_EXIT_SYSTEM_EVENT
    lib.pyvmm_run_system_event(run).type = lib.KVM_SYSTEM_EVENT_SHUTDOWN
    assert handle_exit(run, SIZE, CTX, Bus(), MsrHandlers()).kind == "shutdown"
    lib.pyvmm_run_system_event(run).type = lib.KVM_SYSTEM_EVENT_RESET
    assert "reset" in handle_exit(run, SIZE, CTX, Bus(), MsrHandlers()).reason


def test_debug_exit_carries_pc(run):
    run.exit_reason = lib.KVM_EXIT_DEBUG
    d = lib.pyvmm_run_debug(run)
    d.exception, d.pc = 1, 0x100123
    out = handle_exit(run, SIZE, CTX, Bus(), MsrHandlers())
    assert out.kind == "debug" and out.details["pc"] == 0x100123
