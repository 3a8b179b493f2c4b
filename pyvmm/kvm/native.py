"""The one door to the cffi extension ``pyvmm._native``: no other module imports it.

Every module that needs ``ffi`` or ``lib`` (the kvm layer, the run loop, the exit trace)
takes them from here.  As the ``cryptography`` package does with its binding, the door
checks what it opens: the extension carries the pyvmm version it was built for
(cbindings/build_native.py compiles it in), and one built for another version, a stale
``.so`` beside newer Python files, is refused with one line (:class:`NativeBindingError`,
status 121) before anything reads a struct whose layout may have moved.  The struct
layouts and ioctl numbers all come from the system's ``<linux/kvm.h>`` at build time;
cffi objects carry no static types, so they are ``Cdata``.
"""

from __future__ import annotations

from pyvmm import __version__
from pyvmm.kvm.errors import NativeBindingError

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any

#: what to do about a missing or stale extension
_REINSTALL = ("reinstall pyvmm (pip install --force-reinstall pyvmm-kvm; in a source "
              "checkout: make)")


def check_version(built_for: str | None, version: str = __version__) -> None:
    """Raise :class:`NativeBindingError` unless the extension was built for ``version``
    (``built_for`` None: an extension older than the version check)."""
    if built_for != version:
        what = f"pyvmm {built_for}" if built_for else "an older pyvmm"
        raise NativeBindingError(f"pyvmm {version} found its C extension pyvmm._native built "
                                 f"for {what}: {_REINSTALL}")


def _built_for(lib: Any, ffi: Any) -> str | None:
    """The version the extension says it was built for; None where it says none."""
    get = getattr(lib, "pyvmm_native_version", None)
    if get is None:
        return None
    return str(ffi.string(get()).decode("ascii", "replace"))


try:
    from pyvmm._native import ffi, lib
except ImportError as e:
    raise NativeBindingError(f"pyvmm {__version__} cannot load its C extension pyvmm._native "
                             f"({e}): {_REINSTALL}") from None
check_version(_built_for(lib, ffi))

#: a cffi struct or pointer (cffi has no static types); at run time only annotations and
#: old imports name it
if TYPE_CHECKING:
    Cdata = Any
else:
    Cdata = object


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


__all__ = ["Cdata", "NativeBindingError", "cdata_bytes", "cdata_from", "check_version", "ffi",
           "lib"]
