"""The HPET as QEMU's PC has one (IA-PC HPET specification 1.0a): MMIO at 0xFED00000, a
64-bit main counter at 100 MHz, three comparators with one-shot and periodic modes, legacy
replacement routing, and interrupts through KVM's irqchip.

The counter is the host's monotonic clock scaled to 100 MHz while the HPET is enabled.
Comparator matches are kept on a heap and fired by one timer thread per HPET; an interrupt
is an edge (a KVM_IRQ_LINE pulse) or a level held until the guest clears its GINTR_STA bit.
Timer N goes to the IOAPIC pin its route names (2, as on QEMU's PC, or 16-23), or, in legacy
replacement mode, timer 0 to IRQ 0 (GSI 0: PIC pin 0 and IOAPIC pin 2, as on a PC) and
timer 1 to IRQ 8, with the PIT's own IRQ 0 silenced.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable

from pyvmm.devices.base import Device, VcpuContext
from pyvmm.devices.fastpath import Space

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

HPET_BASE = 0xFED00000
HPET_LEN = 0x400
NUM_TIMERS = 3
PERIOD_FS = 10_000_000  # 10 ns: 100 MHz
VENDOR = 0x8086
# GCAP_ID: revision 1, 3 timers, 64-bit counter, legacy replacement capable, vendor, period
GCAP_ID = 0x01 | ((NUM_TIMERS - 1) << 8) | (1 << 13) | (1 << 15) | (VENDOR << 16) | (PERIOD_FS << 32)
GEN_CONF, GINTR_STA, MAIN_COUNTER = 0x10, 0x20, 0xF0
ENABLE_CNF, LEG_RT_CNF = 1 << 0, 1 << 1
TN_INT_TYPE_LEVEL, TN_INT_ENB, TN_PERIODIC = 1 << 1, 1 << 2, 1 << 3
TN_PER_INT_CAP, TN_SIZE_CAP, TN_VAL_SET, TN_32MODE = 1 << 4, 1 << 5, 1 << 6, 1 << 8
TN_ROUTE_SHIFT, TN_ROUTE_MASK = 9, 0x1F << 9
TN_WRITABLE = TN_INT_TYPE_LEVEL | TN_INT_ENB | TN_PERIODIC | TN_VAL_SET | TN_32MODE | TN_ROUTE_MASK
#: IOAPIC pins a timer may be routed to (Tn_INT_ROUTE_CAP): 2, as QEMU's HPET offers, and
#: 16-23, free of ISA devices
ROUTE_CAP = 0x00FF0004
#: the shortest period honoured: a guest cannot make the host spin
MIN_PERIOD_NS = 100_000
LEGACY_GSI = (0, 8)


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class Timer:
    def __init__(self, n: int) -> None:
        self.n = n
        self.config = TN_PER_INT_CAP | TN_SIZE_CAP | (ROUTE_CAP << 32)
        self.cmp = (1 << 64) - 1
        self.period = 0
        self.asserted_gsi: int | None = None
        self.gen = 0  # the heap entry with this generation is the live one


def _no_legacy(on: bool) -> None:
    return None


class Hpet(Device):
    """``irq_line(gsi, level)`` is KVM_IRQ_LINE; ``legacy(on)`` silences the PIT's IRQ 0."""

    def __init__(self, irq_line: Callable[[int, int], object],
                 legacy: Callable[[bool], None] = lambda on: None, name: str = "hpet") -> None:
        self.name = name
        self.irq_line = irq_line
        self.legacy = legacy
        self.conf = 0
        self.isr = 0
        self.timers = [Timer(n) for n in range(NUM_TIMERS)]
        self._offset = 0  # counter value when last stopped (or written)
        self._t0 = 0  # host ns when the counter last started
        self._heap: list[tuple[int, int, int]] = []  # (host deadline ns, generation, timer)
        self._gen = 0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    # --- the counter -----------------------------------------------------------
    def counter(self) -> int:
        if self.conf & ENABLE_CNF:
            return (self._offset + (time.monotonic_ns() - self._t0) // 10) & ((1 << 64) - 1)
        return self._offset

    def _host_ns(self, ticks: int) -> int:
        """The host time at which the counter reads ``ticks``."""
        return self._t0 + (ticks - self._offset) * 10

    # --- registers ---------------------------------------------------------------
    def ranges(self) -> list[tuple[Space, int, int]]:
        return [(Space.MMIO, HPET_BASE, HPET_LEN)]

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        off = addr
        base, shift = off & ~7, (off & 7) * 8
        with self._cond:
            value = self._reg(base)
        return (value >> shift) & ((1 << (8 * size)) - 1)

    def _reg(self, off: int) -> int:
        if off == 0:
            return GCAP_ID
        if off == GEN_CONF:
            return self.conf
        if off == GINTR_STA:
            return self.isr
        if off == MAIN_COUNTER:
            return self.counter()
        t = self._timer(off)
        if t is None:
            return 0
        reg = (off - 0x100) % 0x20
        return t.config if reg == 0 else t.cmp if reg == 8 else 0

    def _timer(self, off: int) -> Timer | None:
        if 0x100 <= off < 0x100 + 0x20 * NUM_TIMERS:
            return self.timers[(off - 0x100) // 0x20]
        return None

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        off = addr
        base, shift = off & ~7, (off & 7) * 8
        mask = ((1 << (8 * size)) - 1) << shift
        with self._cond:
            old = self._reg(base)
            new = (old & ~mask) | ((value << shift) & mask)
            self._store(base, old, new, mask)
            self._cond.notify()

    def _store(self, off: int, old: int, new: int, mask: int) -> None:
        if off == GEN_CONF:
            self._set_conf(new & (ENABLE_CNF | LEG_RT_CNF))
        elif off == GINTR_STA:
            cleared = new & mask & self.isr  # write 1 to clear a level interrupt
            for timer in self.timers:
                if cleared & (1 << timer.n):
                    self._lower(timer)
            self.isr &= ~cleared
        elif off == MAIN_COUNTER and not self.conf & ENABLE_CNF:
            self._offset = new
        else:
            t = self._timer(off)
            if t is None:
                return
            reg = (off - 0x100) % 0x20
            if reg == 0:
                t.config = (t.config & ~TN_WRITABLE) | (new & TN_WRITABLE)
                if not t.config & TN_INT_ENB:
                    self._lower(t)
            elif reg == 8:
                self._set_cmp(t, new, mask)
            self._schedule(t)

    def _set_conf(self, conf: int) -> None:
        was = self.conf
        if conf & ENABLE_CNF and not was & ENABLE_CNF:
            self._t0 = time.monotonic_ns()
        elif was & ENABLE_CNF and not conf & ENABLE_CNF:
            self._offset = self.counter()
        self.conf = conf
        if (conf ^ was) & LEG_RT_CNF:
            self.legacy(bool(conf & LEG_RT_CNF))
        for t in self.timers:
            self._schedule(t)

    def _set_cmp(self, t: Timer, value: int, mask: int) -> None:
        if t.config & TN_32MODE:
            value &= 0xFFFFFFFF
        periodic = t.config & TN_PERIODIC
        if not periodic or t.config & TN_VAL_SET:
            t.cmp = (t.cmp & ~mask) | (value & mask)
        if periodic:
            t.period = (t.period & ~mask) | (value & mask)
        t.config &= ~TN_VAL_SET

    # --- interrupts --------------------------------------------------------------
    def _gsi(self, t: Timer) -> int:
        if self.conf & LEG_RT_CNF and t.n < len(LEGACY_GSI):
            return LEGACY_GSI[t.n]
        pin = (t.config & TN_ROUTE_MASK) >> TN_ROUTE_SHIFT
        return 0 if pin == 2 else pin  # IOAPIC pin 2 is GSI 0 on a PC (the MADT's override)

    def _lower(self, t: Timer) -> None:
        if t.asserted_gsi is not None:
            self.irq_line(t.asserted_gsi, 0)
            t.asserted_gsi = None

    def _fire(self, t: Timer) -> None:
        if t.config & TN_INT_TYPE_LEVEL:
            self.isr |= 1 << t.n
        if t.config & TN_INT_ENB:
            gsi = self._gsi(t)
            if t.config & TN_INT_TYPE_LEVEL:
                if t.asserted_gsi is None:
                    self.irq_line(gsi, 1)
                    t.asserted_gsi = gsi
            else:
                self.irq_line(gsi, 1)
                self.irq_line(gsi, 0)
        if t.config & TN_PERIODIC and t.period:
            t.cmp = (t.cmp + t.period) & ((1 << 64) - 1)

    def _schedule(self, t: Timer) -> None:
        """(Re)arm ``t``'s next match; stale heap entries are told apart by generation."""
        self._gen += 1
        if not (self.conf & ENABLE_CNF and t.config & TN_INT_ENB):
            return
        now = self.counter()
        if t.config & TN_PERIODIC and t.period and t.cmp < now:
            behind = (now - t.cmp) // t.period + 1  # the comparator is in the past: catch up
            t.cmp += behind * t.period
        if t.cmp < now and not t.config & TN_PERIODIC:
            return  # a one-shot in the past fires only after the counter wraps
        heapq.heappush(self._heap, (self._host_ns(t.cmp), self._gen, t.n))
        t.gen = self._gen
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._loop, name="hpet", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                when, gen, n = self._heap[0]
                t = self.timers[n]
                if gen != t.gen:
                    heapq.heappop(self._heap)  # superseded by a newer arming
                    continue
                delay = (when - time.monotonic_ns()) / 1e9
                if delay > 0:
                    self._cond.wait(min(delay, 60.0))  # far matches: look again later
                    continue
                heapq.heappop(self._heap)
                self._fire(t)
                if t.config & TN_PERIODIC and t.period:
                    step = max(t.period * 10, MIN_PERIOD_NS)
                    self._gen += 1
                    t.gen = self._gen
                    heapq.heappush(self._heap, (max(when + step, time.monotonic_ns()), self._gen, n))

    def state(self) -> dict[str, Any]:
        """Registers, the counter's value now, and each timer's comparator and period."""
        with self._cond:
            return {"conf": self.conf, "isr": self.isr, "counter": self.counter(),
                    "timers": [[t.config, t.cmp, t.period] for t in self.timers]}

    def check_state(self, state: dict[str, Any]) -> None:
        """ValueError unless ``state`` is one this HPET can be in: only its configuration
        bits set, comparators and periods within the counter's width, and each timer's
        read-only capability bits as they are."""
        self._checked(state)

    def _checked(self, state: dict[str, Any]) -> tuple[int, int, int, list[tuple[int, int, int]]]:
        if set(state) != {"conf", "isr", "counter", "timers"}:
            raise ValueError("it needs conf, isr, counter and timers")
        conf, isr, counter, timers = state["conf"], state["isr"], state["counter"], state["timers"]
        if not isinstance(timers, list | tuple) or len(timers) != NUM_TIMERS or not all(
                isinstance(t, list | tuple) and len(t) == 3 for t in timers):
            raise ValueError(f"timers must be {NUM_TIMERS} [config, comparator, period]")
        fields = [("conf", conf, ENABLE_CNF | LEG_RT_CNF), ("isr", isr, (1 << NUM_TIMERS) - 1),
                  ("counter", counter, (1 << 64) - 1)]
        for n, (config, cmp, period) in enumerate(timers):
            width = (1 << 32) - 1 if _int(config) and config & TN_32MODE else (1 << 64) - 1
            fields += [(f"timer {n} config", config, (1 << 64) - 1),
                       (f"timer {n} comparator", cmp, width), (f"timer {n} period", period, width)]
        for what, v, most in fields:
            if not _int(v) or not 0 <= v <= most or v & ~most:
                raise ValueError(f"{what} is {v!r}, out of range")
        fixed = TN_PER_INT_CAP | TN_SIZE_CAP | (ROUTE_CAP << 32)
        for n, (config, _, _) in enumerate(timers):
            if config & ~TN_WRITABLE != fixed:
                raise ValueError(f"timer {n} config {config:#x} is not one this HPET can have")
        return conf, isr, counter, [(a, b, c) for a, b, c in timers]

    def set_state(self, state: dict[str, Any]) -> None:
        """The counter goes on from the saved value (time in between is not seen); a state
        :meth:`check_state` refuses is a ValueError, and nothing changes."""
        conf, isr, counter, timers = self._checked(state)
        with self._cond:
            self.conf, self.isr = conf, isr
            self._offset, self._t0 = counter & ((1 << 64) - 1), time.monotonic_ns()
            for t, (config, cmp, period) in zip(self.timers, timers, strict=True):
                t.config, t.cmp, t.period = config, cmp, period
                self._schedule(t)
            self._cond.notify()

    def reset(self) -> None:
        """Disabled, as after a platform reset (S3 resume)."""
        with self._cond:
            self._set_conf(0)
            for t in self.timers:
                self._lower(t)
            self.isr = 0

    def close(self) -> None:
        """Stop the timer thread and wait for it: once this returns, no interrupt is
        raised any more (the machine closes the VM's fd next, and a late KVM_IRQ_LINE
        would fail with EBADF on a thread nobody watches)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        for t in self.timers:
            t.asserted_gsi = None
        # the PIT callback closes over the machine, which holds this device: dropped, the
        # machine goes by reference counting (no thread calls it any more)
        self.legacy = _no_legacy
