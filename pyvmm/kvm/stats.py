"""KVM binary statistics (KVM_GET_STATS_FD), parsed into named values.

The fd holds a header, an id string, one descriptor per statistic and a data block.
The descriptors never change for the life of the fd, so :class:`StatsReader` parses them
once and afterwards re-reads only the data block with a single ``pread``.  The parser
works on bytes, so it is tested without KVM.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from pyvmm.errors import PyvmmError

_HEADER = struct.Struct("<6I")  # flags name_size num_desc id_offset desc_offset data_offset
_DESC = struct.Struct("<IhHII")  # flags exponent size offset bucket_size (then the name)

TYPE_MASK = 0xF
TYPE_CUMULATIVE, TYPE_INSTANT, TYPE_PEAK, TYPE_LINEAR_HIST, TYPE_LOG_HIST = 0, 1, 2, 3, 4
UNIT_SHIFT = 4
UNIT_NAMES = {0: "", 1: "bytes", 2: "seconds", 3: "cycles", 4: "boolean"}


@dataclass(frozen=True)
class StatDesc:
    """One statistic: its name, where its value lies in the data block and how to read it."""

    name: str
    flags: int
    exponent: int
    size: int
    offset: int
    bucket_size: int

    @property
    def kind(self) -> int:
        return self.flags & TYPE_MASK

    @property
    def cumulative(self) -> bool:
        """Cumulative counters and histograms are compared as deltas; others as values."""
        return self.kind in (TYPE_CUMULATIVE, TYPE_LINEAR_HIST, TYPE_LOG_HIST)

    @property
    def unit(self) -> str:
        return UNIT_NAMES.get((self.flags >> UNIT_SHIFT) & 0xF, "?")


StatValue = int | tuple[int, ...]


class StatsFormatError(PyvmmError, ValueError):
    """The stats fd's contents do not follow the documented layout."""


def parse_descriptors(blob: bytes) -> tuple[str, list[StatDesc], int]:
    """Parse header, id and descriptors from the start of a stats fd.

    Returns ``(id, descriptors, data_offset)``.  Every offset is checked against the blob
    so a short or corrupt read raises :class:`StatsFormatError` instead of misreading.
    """
    if len(blob) < _HEADER.size:
        raise StatsFormatError("stats header truncated")
    _flags, name_size, num_desc, id_off, desc_off, data_off = _HEADER.unpack_from(blob, 0)
    if id_off + name_size > len(blob):
        raise StatsFormatError("stats id outside the header block")
    ident = blob[id_off:id_off + name_size].split(b"\0", 1)[0].decode("ascii", "replace")
    step = _DESC.size + name_size
    if desc_off + num_desc * step > len(blob):
        raise StatsFormatError("stats descriptors truncated")
    descs = []
    for i in range(num_desc):
        base = desc_off + i * step
        flags, exponent, size, offset, bucket = _DESC.unpack_from(blob, base)
        raw = blob[base + _DESC.size:base + step]
        name = raw.split(b"\0", 1)[0].decode("ascii", "replace")
        descs.append(StatDesc(name, flags, exponent, size, offset, bucket))
    return ident, descs, data_off


def data_size(descs: list[StatDesc]) -> int:
    """Bytes needed to hold every descriptor's values."""
    return max((d.offset + 8 * d.size for d in descs), default=0)


def parse_values(descs: list[StatDesc], data: bytes) -> dict[str, StatValue]:
    """Decode the data block: one u64 per scalar, a tuple of u64 per histogram."""
    out: dict[str, StatValue] = {}
    for d in descs:
        end = d.offset + 8 * d.size
        if end > len(data):
            raise StatsFormatError(f"stat {d.name} lies outside the data block")
        vals = struct.unpack_from(f"<{d.size}Q", data, d.offset)
        out[d.name] = vals[0] if d.size == 1 else tuple(vals)
    return out


def delta(
    descs: Mapping[str, StatDesc], before: Mapping[str, StatValue], after: Mapping[str, StatValue]
) -> dict[str, StatValue]:
    """What moved between two snapshots: deltas for counters, new values for the rest.

    Only statistics whose value changed are returned, so the result reads as "what KVM
    did" during the interval.
    """
    moved: dict[str, StatValue] = {}
    for name, new in after.items():
        old = before.get(name, new)
        if new == old:
            continue
        d = descs.get(name)
        if d is not None and d.cumulative:
            if isinstance(new, tuple) and isinstance(old, tuple):
                moved[name] = tuple(a - b for a, b in zip(new, old, strict=True))
            elif isinstance(new, int) and isinstance(old, int):
                moved[name] = new - old
        else:
            moved[name] = new
    return moved


def split(values: Mapping[str, StatValue]) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """``(scalars, histograms)``: counters and gauges read as ``int``, histograms apart."""
    scalars = {k: v for k, v in values.items() if isinstance(v, int)}
    hists = {k: v for k, v in values.items() if isinstance(v, tuple)}
    return scalars, hists


_PARSED: dict[bytes, tuple[list[StatDesc], int]] = {}


class StatsReader:
    """Reads a VM's or vCPU's stats fd: descriptors once, values on every :meth:`read`.

    The reader owns the fd and closes it in :meth:`close`.
    """

    def __init__(self, fd: int, reader: Callable[[int, int, int], bytes] = os.pread) -> None:
        self.fd = fd
        self._pread = reader
        head = reader(fd, _HEADER.size, 0)
        if len(head) < _HEADER.size:
            raise StatsFormatError("stats header truncated")
        _f, name_size, num_desc, id_off, desc_off, _data = _HEADER.unpack(head)
        span = max(id_off + name_size, desc_off + num_desc * (_DESC.size + name_size))
        blob = reader(fd, span, 0)
        self.id = blob[id_off:id_off + name_size].split(b"\0", 1)[0].decode("ascii", "replace")
        # every VM (and every vCPU) of a module has the same descriptors: parse them once
        key = blob[:id_off] + blob[id_off + name_size:]
        parsed = _PARSED.get(key)
        if parsed is None:
            parsed = _PARSED[key] = parse_descriptors(blob)[1:]
        descs, self._data_off = parsed
        self.descriptors: dict[str, StatDesc] = {d.name: d for d in descs}
        self._descs = descs
        self._data_size = data_size(descs)

    def read(self) -> dict[str, StatValue]:
        """A snapshot of every statistic (one pread)."""
        return parse_values(self._descs, self._pread(self.fd, self._data_size, self._data_off))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
