"""The C run loop's fast exit table, as devices describe their entries (runloop.h).

A device that can be answered without Python returns :class:`FastEntry` requests from
``fast_entries()``; each vCPU's loop copies them into its C table.  The numbers below are
runloop.h's; ``pyvmm.vstate.loop`` checks them against the compiled extension at import.
The vocabulary lives with the devices that speak it (the run loop, above them, reads it);
an entry's ``owner`` is any :class:`FastOwner` (every :class:`~pyvmm.devices.base.Device`
is one), so this module needs nothing from the devices.
"""

from __future__ import annotations

from enum import IntEnum

from pyvmm.record import fields_repr

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Protocol
else:  # a plain base at run time: nothing checks it there (it is not runtime_checkable)
    Protocol = object


class FastOwner(Protocol):
    """What the run loop asks of an entry's device: its name (in messages and counts)
    and where the bytes and counts C collected for it go."""

    name: str

    def fast_event(self, data: bytes) -> None: ...

    def fast_hits(self, entry: FastEntry, hits: int, last_value: int) -> None: ...


class Space(IntEnum):
    """Which address space an access is in (PYVMM_SPACE_*)."""

    PIO = 0
    MMIO = 1


class Action(IntEnum):
    """What the C run loop does for an entry (PYVMM_ACT_*)."""

    SINK = 1  # writes dropped, reads return read_value
    BUFFER = 2  # written bytes appended to the loop's byte buffer (owner.fast_event)
    STOP = 3  # a write stops the loop with the value written
    COUNTER = 4  # like SINK, and the last value written is kept
    CLOCK = 5  # reads: host CLOCK_MONOTONIC since read_value (ns) at clock_hz, & clock_mask


READ = 1  # PYVMM_DIR_READ
WRITE = 2  # PYVMM_DIR_WRITE


class FastEntry:
    """A request to answer some exits in C.  ``owner`` receives buffered bytes (BUFFER,
    ``fast_event``) and the counts of what C answered (``fast_hits``).  Equal only to
    itself: each is one device's entry."""

    __slots__ = ("action", "base", "clock_hz", "clock_mask", "dirs", "enabled", "length", "owner",
                 "read_value", "space")

    def __init__(self, space: Space, base: int, length: int, dirs: int, action: Action,
                 owner: FastOwner, read_value: int = 0, enabled: bool = True, clock_hz: int = 0,
                 clock_mask: int = 0) -> None:
        self.space = space
        self.base = base
        self.length = length
        self.dirs = dirs
        self.action = action
        self.owner = owner
        self.read_value = read_value
        self.enabled = enabled
        self.clock_hz = clock_hz
        self.clock_mask = clock_mask

    def detach(self) -> None:
        """Forget the owner (its device is closed): the owner holds the entry, so the two
        would otherwise go only at the collector's next cycle pass, not with the machine."""
        self.owner = _CLOSED

    def __repr__(self) -> str:
        return fields_repr(self, ["space", "base", "length", "dirs", "action", "owner",
                                  "read_value", "enabled", "clock_hz", "clock_mask"])


class _ClosedOwner:
    """The owner of a closed device's entries (:meth:`FastEntry.detach`)."""

    name = "closed"

    def fast_event(self, data: bytes) -> None:
        return None

    def fast_hits(self, entry: FastEntry, hits: int, last_value: int) -> None:
        return None


_CLOSED = _ClosedOwner()
