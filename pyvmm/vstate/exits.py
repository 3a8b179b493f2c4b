"""Exit decoding: what one ``KVM_RUN`` exit means, as free functions over ``kvm_run``.

:func:`handle_exit` takes the ``kvm_run`` of a vCPU that just exited, answers PIO, MMIO
and MSR exits through the bus and the MSR handlers (writing read data back into
``kvm_run``), and turns every other exit into an :class:`~pyvmm.vstate.result.Outcome`.
Everything read from ``kvm_run`` is checked before use (sizes, counts, the data window).
The functions need no vCPU fd and no thread: unit tests drive them with a fake ``kvm_run``
as they drive the C loop's table.
"""

from __future__ import annotations

from pyvmm.devices.base import VcpuContext
from pyvmm.devices.bus import Bus, GuestStop
from pyvmm.devices.fastpath import Space
from pyvmm.devices.msr import MsrHandlers
from pyvmm.errors import GuestIoError
from pyvmm.kvm import run as kvm_run
from pyvmm.kvm.native import Cdata
from pyvmm.vstate.result import Outcome, RunStatus

IO_SIZES = (1, 2, 4)
_CRASH_EXITS = {
    "SHUTDOWN": "triple fault (KVM_EXIT_SHUTDOWN)",
    "FAIL_ENTRY": "VM entry failed (KVM_EXIT_FAIL_ENTRY)",
    "INTERNAL_ERROR": "KVM internal error",
    "EXCEPTION": "unhandled exception (KVM_EXIT_EXCEPTION)",
    "NMI": "unexpected NMI exit",
    "UNKNOWN": "unknown exit (KVM_EXIT_UNKNOWN)",
}
_STOPS = {"debug-exit": RunStatus.EXIT, "done": RunStatus.DONE, "assert": RunStatus.ASSERT,
          "exception": RunStatus.ASSERT, "error": RunStatus.ASSERT, "suspend": RunStatus.SUSPEND}


def stop_outcome(stop: GuestStop, vcpu: int) -> Outcome:
    """A device ended the run: debug-exit -> ``exit``; GUEST_DONE -> ``done``; a failed
    assertion, an unhandled exception or a bad guest message -> ``assert``; anything else
    (Bochs, ACPI power-off) -> ``shutdown``."""
    out = Outcome(_STOPS.get(stop.reason, RunStatus.SHUTDOWN), vcpu, stop.code, stop.reason)
    event = stop.event
    if event is not None:
        out.reason = event.describe()  # type: ignore[attr-defined]
        out.details["event"] = event
    return out


def handle_exit(run: Cdata, run_size: int, ctx: VcpuContext, bus: Bus,
                msrs: MsrHandlers) -> Outcome | None:
    """Answer the exit in ``run``; None means "handled, run again"."""
    reason = int(run.exit_reason)
    try:
        if reason == kvm_run.EXIT_IO:
            return pio(run, run_size, ctx, bus)
        if reason == kvm_run.EXIT_MMIO:
            return mmio(run, ctx, bus)
        if reason in (kvm_run.EXIT_X86_RDMSR, kvm_run.EXIT_X86_WRMSR):
            return msr(run, reason == kvm_run.EXIT_X86_WRMSR, msrs)
    except GuestStop as stop:
        return stop_outcome(stop, ctx.vcpu)
    except GuestIoError as e:
        return Outcome(RunStatus.IO_ERROR, ctx.vcpu, reason=str(e), exit_reason=reason)
    return terminal(run, ctx.vcpu)


def pio(run: Cdata, run_size: int, ctx: VcpuContext, bus: Bus) -> Outcome | None:
    """KVM_EXIT_IO: ``count`` accesses of ``size`` bytes at ``data_offset`` in kvm_run."""
    io = kvm_run.io(run)
    size, count, off = int(io.size), int(io.count), int(io.data_offset)
    if size not in IO_SIZES or count == 0 or off + size * count > run_size:
        return Outcome(RunStatus.CRASH, ctx.vcpu, reason=f"malformed PIO exit (size {size}, "
                       f"count {count}, offset {off:#x})", exit_reason=kvm_run.EXIT_IO)
    data = kvm_run.window(run, off, size * count)
    port = int(io.port)
    if io.direction == kvm_run.EXIT_IO_OUT:
        for i in range(count):
            bus.write(Space.PIO, port, size, int.from_bytes(data[i * size:(i + 1) * size], "little"),
                      ctx)
    else:
        for i in range(count):
            data[i * size:(i + 1) * size] = bus.read(Space.PIO, port, size, ctx).to_bytes(size, "little")
    return None


def mmio(run: Cdata, ctx: VcpuContext, bus: Bus) -> Outcome | None:
    """KVM_EXIT_MMIO: one access of 1-8 bytes; read data goes back into ``mmio.data``."""
    m = kvm_run.mmio(run)
    n = int(m.len)
    if not 1 <= n <= 8:
        return Outcome(RunStatus.CRASH, ctx.vcpu, reason=f"malformed MMIO exit (len {n})",
                       exit_reason=kvm_run.EXIT_MMIO)
    addr = int(m.phys_addr)
    if m.is_write:
        bus.write(Space.MMIO, addr, n, int.from_bytes(kvm_run.mmio_data(m, n), "little"), ctx)
    else:
        kvm_run.set_mmio_data(m, bus.read(Space.MMIO, addr, n, ctx).to_bytes(n, "little"))
    return None


def msr(run: Cdata, is_write: bool, msrs: MsrHandlers) -> Outcome | None:
    """A userspace MSR exit: the handler's answer, or ``error = 1`` so that the guest takes
    #GP, as hardware does for an MSR nobody implements."""
    m = kvm_run.msr(run)
    index = int(m.index)
    if is_write:
        m.error = 0 if msrs.write(index, int(m.data)) else 1
    else:
        value = msrs.read(index)
        m.error = 1 if value is None else 0
        if value is not None:
            m.data = value
    return None


def terminal(run: Cdata, vcpu: int) -> Outcome:
    """An exit that ends the vCPU's run: power-off, crash, debug."""
    reason = int(run.exit_reason)
    name = kvm_run.exit_name(reason)
    if reason == kvm_run.EXIT_SYSTEM_EVENT:
        ev = kvm_run.system_event(run)
        if ev.type == kvm_run.SYSTEM_EVENT_SHUTDOWN:
            return Outcome(RunStatus.SHUTDOWN, vcpu, 0, "guest powered off (system event)", reason)
        if ev.type == kvm_run.SYSTEM_EVENT_RESET:
            return Outcome(RunStatus.CRASH, vcpu, reason="guest asked for a reset", exit_reason=reason)
        return Outcome(RunStatus.CRASH, vcpu, reason=f"guest crash event (type {ev.type})",
                       exit_reason=reason)
    if reason == kvm_run.EXIT_HLT:
        return Outcome(RunStatus.CRASH, vcpu, reason="guest halted with no way to wake (HLT exit)",
                       exit_reason=reason)
    if reason == kvm_run.EXIT_INTERNAL_ERROR:
        ie = kvm_run.internal(run)
        text = kvm_run.INTERNAL_ERRORS.get(int(ie.suberror), f"suberror {ie.suberror}")
        data = [int(ie.data[i]) for i in range(min(int(ie.ndata), 16))]
        return Outcome(RunStatus.CRASH, vcpu, reason=f"KVM internal error: {text}",
                       exit_reason=reason, details={"suberror": int(ie.suberror), "data": data})
    if reason == kvm_run.EXIT_FAIL_ENTRY:
        fe = kvm_run.fail_entry(run)
        return Outcome(RunStatus.CRASH, vcpu, reason=_CRASH_EXITS["FAIL_ENTRY"] +
                       f", hardware reason {fe.hardware_entry_failure_reason:#x}", exit_reason=reason)
    if reason == kvm_run.EXIT_DEBUG:
        dbg = kvm_run.debug(run)
        return Outcome(RunStatus.DEBUG, vcpu, reason=f"debug exit (exception {dbg.exception}) at "
                       f"{dbg.pc:#x}", exit_reason=reason,
                       details={"pc": int(dbg.pc), "dr6": int(dbg.dr6), "exception": int(dbg.exception)})
    text = _CRASH_EXITS.get(name, f"unhandled exit KVM_EXIT_{name}")
    return Outcome(RunStatus.CRASH, vcpu, reason=text, exit_reason=reason)
