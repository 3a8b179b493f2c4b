"""The C run loop's fast exit table, as devices describe their entries (runloop.h).

A device that can be answered without Python returns :class:`FastEntry` requests from
``fast_entries()``; each vCPU's loop copies them into its C table.  The numbers below are
runloop.h's; ``pyvmm.vstate.loop`` checks them against the compiled extension at import.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyvmm.devices.base import Device


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


@dataclass(eq=False)
class FastEntry:
    """A request to answer some exits in C.  ``owner`` receives buffered bytes (BUFFER,
    ``fast_event``) and the counts of what C answered (``fast_hits``)."""

    space: Space
    base: int
    length: int
    dirs: int
    action: Action
    owner: Device
    read_value: int = 0
    enabled: bool = True
    clock_hz: int = 0
    clock_mask: int = 0
