"""``struct kvm_run``: the exit reasons by name and typed views of its unions.

``kvm_run``'s exit data lives in anonymous unions that cffi cannot declare with ``...;``;
cbindings/build_native.py declares one view struct per union member and checks each
view's field offsets against the real header at compile time.  The decoders in
``pyvmm.vstate.exits`` read exits only through these functions.
"""

from __future__ import annotations

from pyvmm.kvm.native import Cdata, ffi, lib

EXIT_NAMES: dict[int, str] = {
    int(getattr(lib, name)): name[len("KVM_EXIT_"):]
    for name in dir(lib)
    if name.startswith("KVM_EXIT_") and name not in ("KVM_EXIT_IO_IN", "KVM_EXIT_IO_OUT")
}

EXIT_IO = int(lib.KVM_EXIT_IO)
EXIT_MMIO = int(lib.KVM_EXIT_MMIO)
EXIT_INTR = int(lib.KVM_EXIT_INTR)
EXIT_HLT = int(lib.KVM_EXIT_HLT)
EXIT_DEBUG = int(lib.KVM_EXIT_DEBUG)
EXIT_SHUTDOWN = int(lib.KVM_EXIT_SHUTDOWN)
EXIT_FAIL_ENTRY = int(lib.KVM_EXIT_FAIL_ENTRY)
EXIT_INTERNAL_ERROR = int(lib.KVM_EXIT_INTERNAL_ERROR)
EXIT_SYSTEM_EVENT = int(lib.KVM_EXIT_SYSTEM_EVENT)
EXIT_X86_RDMSR = int(lib.KVM_EXIT_X86_RDMSR)
EXIT_X86_WRMSR = int(lib.KVM_EXIT_X86_WRMSR)
EXIT_IO_IN = int(lib.KVM_EXIT_IO_IN)
EXIT_IO_OUT = int(lib.KVM_EXIT_IO_OUT)
SYSTEM_EVENT_SHUTDOWN = int(lib.KVM_SYSTEM_EVENT_SHUTDOWN)
SYSTEM_EVENT_RESET = int(lib.KVM_SYSTEM_EVENT_RESET)
#: KVM_EXIT_INTERNAL_ERROR suberrors, in words
INTERNAL_ERRORS = {
    int(lib.KVM_INTERNAL_ERROR_EMULATION): "emulation failure: KVM cannot emulate the instruction",
    int(lib.KVM_INTERNAL_ERROR_SIMUL_EX): "simultaneous exceptions",
    int(lib.KVM_INTERNAL_ERROR_DELIVERY_EV): "exit while delivering an event",
    int(lib.KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON): "unexpected hardware exit reason",
}


def exit_name(reason: int) -> str:
    """``KVM_EXIT_IO`` -> ``"IO"``; unknown numbers come back as ``"EXIT_<n>"``."""
    return EXIT_NAMES.get(reason, f"EXIT_{reason}")


def io(run: Cdata) -> Cdata:
    """``run->io``: direction, size, port, count, data_offset."""
    return lib.pyvmm_run_io(run)


def mmio(run: Cdata) -> Cdata:
    """``run->mmio``: phys_addr, data[8], len, is_write."""
    return lib.pyvmm_run_mmio(run)


def msr(run: Cdata) -> Cdata:
    """``run->msr``: error, reason, index, data (KVM_EXIT_X86_RDMSR/WRMSR)."""
    return lib.pyvmm_run_msr(run)


def internal(run: Cdata) -> Cdata:
    """``run->internal``: suberror, ndata, data[16]."""
    return lib.pyvmm_run_internal(run)


def system_event(run: Cdata) -> Cdata:
    """``run->system_event``: type, ndata, data[16]."""
    return lib.pyvmm_run_system_event(run)


def debug(run: Cdata) -> Cdata:
    """``run->debug.arch``: exception, pc, dr6, dr7."""
    return lib.pyvmm_run_debug(run)


def fail_entry(run: Cdata) -> Cdata:
    """``run->fail_entry``: hardware_entry_failure_reason, cpu."""
    return lib.pyvmm_run_fail_entry(run)


def window(run: Cdata, offset: int, n: int) -> Cdata:
    """A writable buffer of ``n`` bytes at ``offset`` in the kvm_run mapping (PIO data);
    the caller has checked the range against the mapping's size."""
    return ffi.buffer(ffi.cast("uint8_t *", run) + offset, n)


def mmio_data(m: Cdata, n: int) -> bytes:
    """The first ``n`` bytes of ``run->mmio.data``."""
    return bytes(ffi.buffer(m.data)[:n])


def set_mmio_data(m: Cdata, data: bytes) -> None:
    """Answer an MMIO read: ``data`` (at most 8 bytes) into ``run->mmio.data``."""
    ffi.memmove(m.data, data, len(data))
