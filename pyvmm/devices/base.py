"""What every device is: the :class:`Device` base class and the :class:`VcpuContext` a
device gets with each access.

A device answers reads and writes of its port or MMIO range (``addr`` is absolute).  It
gets the context of the vCPU whose exit it is handling: which vCPU, and its registers at
the exit (``kvm_run->s.regs``, read without an ioctl).  Accesses the VMM makes itself
(tests, set-up) carry :data:`HOST`.  Optionally a device asks the C run loop to answer
some of its exits (``fast_entries``) and then hears what C did (``fast_event`` for buffered
bytes, ``fast_hits`` for counts).
"""

from __future__ import annotations

from typing import Any

from pyvmm.vstate.fastpath import FastEntry


def all_ones(size: int) -> int:
    """What an access of ``size`` bytes to nothing reads: every bit set."""
    return (1 << (8 * size)) - 1


class VcpuContext:
    """The vCPU an access comes from.  ``vcpu`` is its id (-1: the host itself);
    :meth:`reg` reads a general-purpose register as it was at the exit."""

    __slots__ = ("_regs", "vcpu")

    def __init__(self, vcpu: int, sync_regs: Any = None) -> None:
        self.vcpu = vcpu
        self._regs = sync_regs

    def reg(self, name: str) -> int:
        if self._regs is None:
            raise LookupError("an access by the host has no vCPU registers")
        return int(getattr(self._regs.regs, name))


#: the context of accesses the VMM makes itself
HOST = VcpuContext(-1)


class Device:
    """Base for devices on the :class:`~pyvmm.devices.bus.Bus`.  The defaults are what an
    absent register does: reads all-ones, writes ignored, nothing answered in C."""

    name = "device"

    def read(self, addr: int, size: int, ctx: VcpuContext) -> int:
        return all_ones(size)

    def write(self, addr: int, size: int, value: int, ctx: VcpuContext) -> None:
        return None

    def fast_entries(self) -> list[FastEntry]:
        """Exits the C loop may answer for this device (see ``pyvmm.vstate.fastpath``)."""
        return []

    def fast_event(self, data: bytes) -> None:
        """Bytes a BUFFER entry collected in C (the UART's output)."""

    def fast_hits(self, entry: FastEntry, hits: int, last_value: int) -> None:
        """``hits`` more accesses answered in C for ``entry`` since the last report;
        ``last_value`` is the entry's last written value (COUNTER)."""

    def close(self) -> None:
        """Release what the device holds beyond Python objects (timer threads)."""
