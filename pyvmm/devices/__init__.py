"""Devices on pyvmm's I/O bus.  Interrupt controllers and the PIT are KVM's own."""

from pyvmm.devices.bus import Bus, BusError, GuestStop, Space, UnclaimedIoError
from pyvmm.devices.debug_exit import DebugExit
from pyvmm.devices.post import PostPort
from pyvmm.devices.uart import Uart16550

__all__ = ["Bus", "BusError", "DebugExit", "GuestStop", "PostPort", "Space", "Uart16550",
           "UnclaimedIoError"]
