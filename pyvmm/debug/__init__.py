"""Debugging a guest: the Python debug API (:class:`Debugger`, ``Machine.debug``), the gdb
remote stub (``pyvmm run --gdb``), ELF core files of crashed guests and exit traces."""

from pyvmm.debug.debugger import DebugError, Debugger, HwSlot, Stop

__all__ = ["DebugError", "Debugger", "HwSlot", "Stop"]
