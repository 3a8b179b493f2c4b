"""The kvm layer's one door to the cffi extension ``pyvmm._native``.

Every other module of the kvm layer takes ``ffi`` and ``lib`` from here; outside the kvm
layer only the run loop (``pyvmm.vstate.loop``) touches the extension.  The struct layouts
and ioctl numbers all come from the system's ``<linux/kvm.h>`` at build time
(cbindings/build_native.py); cffi objects carry no static types, so they are ``Cdata``.
"""

from __future__ import annotations

from typing import Any

from pyvmm._native import ffi, lib

#: a cffi struct or pointer (cffi has no static types)
Cdata = Any



def cdata_bytes(c: Cdata) -> bytes:
    """The raw bytes of a cffi struct or array (one copy), e.g. ``kvm_fpu.xmm``."""
    return bytes(ffi.buffer(c))


def cdata_from(ctype: str, data: bytes) -> Cdata:
    """A new ``ctype *`` (a struct) filled from ``data`` (at most its size), e.g. a saved
    ``struct kvm_sregs``; ValueError if ``data`` is not exactly that size."""
    obj = ffi.new(ctype)
    size = ffi.sizeof(obj[0])
    if len(data) != size:
        raise ValueError(f"{ctype} is {size} bytes, not {len(data)}")
    ffi.memmove(obj, data, size)
    return obj


__all__ = ["Cdata", "cdata_bytes", "cdata_from", "ffi", "lib"]
