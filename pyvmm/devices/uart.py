"""A 16550A UART (output side), enough for polled drivers.

Writes to THR go to ``output`` (the C loop collects them in its byte buffer, so a byte
costs one exit and no Python).  LSR always reads THRE|TEMT: the transmitter is never
busy.  IER, LCR, MCR, SCR and the divisor latch hold what the guest wrote; with LCR.DLAB
set, offsets 0/1 are the divisor latch, and the C fast path for THR is switched off.
"""

from __future__ import annotations

from collections.abc import Callable

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.fastpath import READ, WRITE, Action, FastEntry, Space

COM1 = 0x3F8
THR, IER, IIR_FCR, LCR, MCR, LSR, MSR, SCR = range(8)
LCR_DLAB = 0x80
LSR_THRE = 0x20
LSR_TEMT = 0x40
LSR_IDLE = LSR_THRE | LSR_TEMT
IIR_NO_INT = 0x01
MSR_IDLE = 0xB0  # DCD, DSR, CTS: a terminal is attached


class Uart16550(Device):
    state_limits = {"regs": 0xFF}  # 8-bit registers
    state_fixed = ("base",)

    def __init__(self, output: Callable[[bytes], None], base: int = COM1, name: str = "uart") -> None:
        self.name = name
        self.base = base
        self.output = output
        self.regs: dict[int | str, int] = {IER: 0, LCR: 0x03, MCR: 0x08, SCR: 0, "dll": 1,
                                          "dlm": 0, "fcr": 0}
        self._thr = FastEntry(Space.PIO, base + THR, 1, WRITE, Action.BUFFER, self)
        self._lsr = FastEntry(Space.PIO, base + LSR, 1, READ, Action.SINK, self, read_value=LSR_IDLE)
        self.on_fast_change: Callable[[FastEntry], None] = lambda entry: None

    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.PIO, self.base, 8)]

    def fast_entries(self) -> list[FastEntry]:
        return [self._thr, self._lsr]

    def close(self) -> None:
        self._thr.detach()
        self._lsr.detach()

    def fast_event(self, data: bytes) -> None:
        self.output(data)

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        off = addr
        dlab = self.regs[LCR] & LCR_DLAB
        if off == THR:
            return self.regs["dll"] if dlab else 0  # no input
        if off == IER:
            return self.regs["dlm"] if dlab else self.regs[IER]
        if off == IIR_FCR:
            return IIR_NO_INT | (0xC0 if self.regs["fcr"] & 1 else 0)
        if off == LSR:
            return LSR_IDLE
        if off == MSR:
            return MSR_IDLE
        return self.regs.get(off, 0)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        off = addr
        value &= 0xFF
        dlab = self.regs[LCR] & LCR_DLAB
        if off == THR:
            if dlab:
                self.regs["dll"] = value
            else:
                self.output(bytes([value]))
        elif off == IER:
            self.regs["dlm" if dlab else IER] = value if dlab else value & 0x0F
        elif off == IIR_FCR:
            self.regs["fcr"] = value
        elif off == LCR:
            self.regs[LCR] = value
            enabled = not value & LCR_DLAB
            if enabled != self._thr.enabled:
                self._thr.enabled = enabled
                self.on_fast_change(self._thr)
        elif off in (MCR, SCR):
            self.regs[off] = value
