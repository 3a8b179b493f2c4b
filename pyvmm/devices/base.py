"""What every device is: the :class:`Device` base class and the :class:`VcpuContext` a
device gets with each access.

A device answers reads and writes of its port or MMIO ranges, which it declares itself
(:meth:`Device.ranges`; ``Bus.attach``).  ``addr`` is the offset into the range the
access hit, as kvmtool and Firecracker hand it: no device subtracts its own base.  It
gets the context of the vCPU whose exit it is handling: which vCPU, and its registers at
the exit (``kvm_run->s.regs``, read without an ioctl).  Accesses the VMM makes itself
(tests, set-up) carry :data:`HOST`.  Optionally a device asks the C run loop to answer
some of its exits (``fast_entries``) and then hears what C did (``fast_event`` for buffered
bytes, ``fast_hits`` for counts).
"""

from __future__ import annotations

import math

from pyvmm.devices.fastpath import FastEntry, Space

TYPE_CHECKING = False  # typing's, without importing typing on the run path (mypy knows it)
if TYPE_CHECKING:
    from typing import Any, ClassVar


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

    def ranges(self) -> list[tuple[Space, int, int]]:
        """The ``(space, base, length)`` ranges the device answers at its own addresses
        (``Bus.attach``): the device, not the machine, knows its ports.  A device placed
        by its user (``Machine.add_device``) may declare none."""
        return []

    def fast_entries(self) -> list[FastEntry]:
        """Exits the C loop may answer for this device (see ``pyvmm.devices.fastpath``)."""
        return []

    def fast_event(self, data: bytes) -> None:
        """Bytes a BUFFER entry collected in C (the UART's output)."""

    def fast_hits(self, entry: FastEntry, hits: int, last_value: int) -> None:
        """``hits`` more accesses answered in C for ``entry`` since the last report;
        ``last_value`` is the entry's last written value (COUNTER)."""

    def state(self) -> dict[str, Any]:
        """What the guest can observe of this device, for snapshots.  By default every
        attribute that holds plain data (numbers, strings, bytes and lists, tuples or dicts
        of them) except ``name``; a device with threads or other objects overrides this
        and :meth:`set_state`."""
        return {k: _copy(v) for k, v in vars(self).items() if k != "name" and _plain(v)}

    #: the largest value each integer attribute of the state may hold (every integer in
    #: it, for a list or dict); integers not named here must fit in 64 bits, and none may
    #: be negative.  What the device's code indexes or packs with must be named here.
    state_limits: ClassVar[dict[str, int]] = {}
    #: attributes in the state that describe the device, not its state (its port): a
    #: state must carry them unchanged
    state_fixed: ClassVar[tuple[str, ...]] = ()

    def check_state(self, state: dict[str, Any]) -> None:
        """ValueError naming the first value of ``state`` (from a snapshot file, so
        untrusted) that this device cannot hold: an attribute it does not have, another
        type or shape than it has now, a number out of range, NaN or infinite."""
        mine = self._current_state()
        for k, v in state.items():
            if k not in mine:
                raise ValueError(f"it has no {k!r}")
            if not _same_shape(mine[k], v):
                raise ValueError(f"{k} is {_short(v)}, not like {_short(mine[k])}")
            if k in self.state_fixed and v != mine[k]:
                raise ValueError(f"{k} is {_short(v)}, not {_short(mine[k])}")
            bad = _out_of_range(v, self.state_limits.get(k, (1 << 64) - 1))
            if bad is not None:
                raise ValueError(f"{k} holds {bad!r}, out of range")

    def _current_state(self) -> dict[str, Any]:
        """What :meth:`state` returns, without its copies where it is the default one:
        only read, to check a state against (a clone checks every device)."""
        if type(self).state is Device.state:
            return {k: v for k, v in vars(self).items() if k != "name" and _plain(v)}
        return self.state()

    def set_state(self, state: dict[str, Any]) -> None:
        """Put back what :meth:`state` returned, after :meth:`check_state` (only the
        attributes it names, of the types they have now: a snapshot file cannot plant
        other attributes or values the device's code cannot take)."""
        self.check_state(state)
        mine = self._current_state()
        for k, v in state.items():
            setattr(self, k, bytearray(v) if isinstance(mine[k], bytearray) else _copy(v))

    def apply_state(self, state: dict[str, Any]) -> None:
        """:meth:`set_state` for a state already checked against this device (a restore
        repeated from the same snapshot): no checks, only copies."""
        if type(self).set_state is not Device.set_state:
            self.set_state(state)
            return
        for k, v in state.items():
            now = getattr(self, k, None)
            setattr(self, k, bytearray(v) if isinstance(now, bytearray) else _copy(v))

    def close(self) -> None:
        """Release what the device holds beyond Python objects (timer threads)."""


#: the scalar types a state may hold (checked by exact type first: the common case)
_SCALARS = frozenset({type(None), bool, int, float, str, bytes, bytearray})


#: types no instance of which is plain data (methods, FastEntry, GuestMemory...), as found
_OPAQUE: set[type] = set()
_PLAIN_BASES = (int, float, str, bytes, bytearray, list, tuple, dict)


def _plain(v: Any) -> bool:
    t = type(v)
    if t in _SCALARS:
        return True
    if t in _OPAQUE:
        return False
    if t is dict:  # the common container, without a generator per level
        for k, x in v.items():
            if not (type(k) in _SCALARS or _plain(k)) or not (type(x) in _SCALARS or _plain(x)):
                return False
        return True
    if not issubclass(t, _PLAIN_BASES):
        if len(_OPAQUE) < 256:
            _OPAQUE.add(t)
        return False
    if isinstance(v, bool | int | float | str | bytes | bytearray):
        return True
    if isinstance(v, list | tuple):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(_plain(k) and _plain(x) for k, x in v.items())
    return False


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _out_of_range(v: Any, limit: int) -> int | float | None:
    """The first number in ``v`` outside ``0..limit`` (or not finite), else None."""
    t = type(v)
    if t is int:  # the common cases first, by exact type
        return v if not 0 <= v <= limit else None
    if t is dict:
        for x in v.values():
            bad = _out_of_range(x, limit)
            if bad is not None:
                return bad
        return None
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int):
        return v if not 0 <= v <= limit else None
    if isinstance(v, float):
        return v if not math.isfinite(v) or not 0 <= v <= limit else None
    if isinstance(v, list | tuple):
        items: list[Any] = list(v)
    elif isinstance(v, dict):
        items = list(v.values())
    else:
        return None
    for x in items:
        bad = _out_of_range(x, limit)
        if bad is not None:
            return bad
    return None


def _copy(v: Any) -> Any:
    if isinstance(v, bytearray):
        return bytearray(v)
    if isinstance(v, list):
        return [_copy(x) for x in v]
    if isinstance(v, dict):
        return {k: _copy(x) for k, x in v.items()}
    return v


def _same_shape(now: Any, new: Any) -> bool:
    """``new`` may replace ``now``: the same type (bytes-likes of the same length), and
    for containers the same shape all the way down."""
    tn = type(now)
    if tn is int or tn is float:  # the common cases first, by exact type
        tw = type(new)
        if tw is int or tw is float:
            return True
    elif tn is dict and type(new) is dict:
        if now.keys() != new.keys():
            return False
        return all(_same_shape(x, new[k]) for k, x in now.items())
    if isinstance(now, bytes | bytearray):
        return isinstance(new, bytes | bytearray) and len(now) == len(new)
    if isinstance(now, bool) or isinstance(new, bool):
        return type(now) is type(new)
    if isinstance(now, int | float) and now is not None:
        return isinstance(new, int | float) and not isinstance(new, bool)
    if isinstance(now, list | tuple):
        return isinstance(new, list | tuple) and len(now) == len(new) and all(
            _same_shape(a, b) for a, b in zip(now, new, strict=True))
    if isinstance(now, dict):
        return isinstance(new, dict) and now.keys() == new.keys() and all(
            _same_shape(now[k], new[k]) for k in now)
    return now is None or type(now) is type(new)
