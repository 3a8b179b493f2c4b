"""tracefs' ``format`` files: the layout of each event's record, as the running kernel
describes it (``events/GROUP/NAME/format``), and the ring buffer's own page and event
headers (``events/header_page``, ``events/header_event``).

Nothing here assumes a layout: every offset and size comes from these files, so a kernel
that adds, moves or widens a field is read correctly.  The files are the kernel's, but a
malformed one (a hostile mount, a truncated read) gives :class:`FormatError`, never a crash.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

_FIELD = re.compile(r"field:(?P<decl>[^;]*);\s*offset:(?P<off>\d+);\s*size:(?P<size>\d+);"
                    r"(?:\s*signed:(?P<signed>\d+);)?")
_SYMBOLIC = re.compile(r"__print_symbolic\(REC->(\w+)[^,]*,((?:\s*\{[^}]*\},?)+)\)")
_PAIR = re.compile(r"\{\s*(-?(?:0x[0-9a-fA-F]+|\d+))(?:\s*\+\s*(\d+))?\s*,\s*((?:\"[^\"]*\"\s*)+)\}")
_INT = {1: "b", 2: "h", 4: "i", 8: "q"}
#: the most a record's field may claim (a record is at most a ring-buffer page)
MAX_RECORD = 1 << 20


class FormatError(ValueError):
    """A format file this module cannot read."""


@dataclass(frozen=True)
class Field:
    """One field of an event record: C declaration's name, byte offset and size, signed."""

    name: str
    offset: int
    size: int
    signed: bool
    #: elements for an array field (``unsigned long caller[8]``), else 0
    array: int = 0
    #: a ``__data_loc`` field: a u32 of (length << 16 | offset) pointing into the record
    data_loc: bool = False
    is_string: bool = False

    def decode(self, rec: bytes | memoryview) -> int | str | bytes | tuple[int, ...] | None:
        """The field's value in ``rec`` (None when the record is too short for it)."""
        end = self.offset + self.size
        if end > len(rec):
            return None
        raw = bytes(rec[self.offset:end])
        if self.data_loc:
            loc = int.from_bytes(raw[:4], "little")
            off, length = loc & 0xFFFF, loc >> 16
            data = bytes(rec[off:off + length]) if off + length <= len(rec) else b""
            return data.split(b"\0", 1)[0].decode("utf-8", "replace") if self.is_string else data
        if self.is_string:
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if self.array and self.size % self.array == 0 and self.size // self.array in (1, 2, 4, 8):
            width = self.size // self.array
            return tuple(int.from_bytes(raw[i:i + width], "little", signed=self.signed)
                         for i in range(0, self.size, width))
        if self.size in (1, 2, 4, 8):
            return int.from_bytes(raw, "little", signed=self.signed)
        return raw


@dataclass
class EventFormat:
    """One event's ``format`` file: name, numeric id (``common_type`` of its records),
    fields (the common ones separate) and the symbolic names its print format gives some
    fields' values (kvm_exit's exit reasons, kvm_userspace_exit's KVM_EXIT_* names)."""

    name: str
    id: int
    fields: list[Field]
    common: list[Field]
    #: per field, each ``__print_symbolic`` table of the print format, in order (kvm_exit
    #: has two: VMX's exit reasons, then SVM's)
    symbols: dict[str, list[dict[int, str]]] = field(default_factory=dict)
    group: str = ""

    def __post_init__(self) -> None:
        # the plain integer fields (most of KVM's) in one struct.unpack; the rest one by one
        simple = sorted((f for f in self.fields if f.size in _INT and not f.array
                         and not f.data_loc and not f.is_string), key=lambda f: f.offset)
        spec, at, names = "<", 0, []
        for f in simple:
            if f.offset < at:  # overlapping fields (a union): decode them one by one
                continue
            spec += f"{f.offset - at}x" if f.offset > at else ""
            spec += _INT[f.size].upper() if not f.signed else _INT[f.size]
            at = f.offset + f.size
            names.append(f.name)
        self._struct = struct.Struct(spec)
        self._names = tuple(names)
        self._rest = [f for f in self.fields if f.name not in names]

    def decode(self, rec: bytes | memoryview) -> dict[str, object]:
        """The event's fields by name (a field the record is too short for is None)."""
        if len(rec) < self._struct.size:
            return {f.name: f.decode(rec) for f in self.fields}
        out: dict[str, object] = dict(zip(self._names, self._struct.unpack_from(rec), strict=True))
        for f in self._rest:
            out[f.name] = f.decode(rec)
        return out

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if f.name == name), None)


def _parse_field(decl: str, offset: int, size: int, signed: bool) -> Field:
    decl = decl.strip()
    data_loc = decl.startswith("__data_loc") or decl.startswith("__rel_loc")
    m = re.search(r"(\w+)\s*(?:\[(\d*)\])?\s*$", decl)
    if m is None:
        raise FormatError(f"unreadable field declaration {decl!r}")
    name = m.group(1)
    array = int(m.group(2)) if m.group(2) else 0
    is_string = "char" in decl.split(name)[0] and (array > 0 or data_loc or "[" in decl)
    if size > MAX_RECORD or offset > MAX_RECORD:
        raise FormatError(f"field {name} claims offset {offset} size {size}")
    return Field(name, offset, size, signed, array, data_loc, is_string)


def parse_format(text: str, group: str = "") -> EventFormat:
    """An ``events/GROUP/NAME/format`` file's text."""
    name = re.search(r"^name:\s*(\S+)", text, re.M)
    ident = re.search(r"^ID:\s*(\d+)", text, re.M)
    if name is None or ident is None:
        raise FormatError("no name: or ID: line")
    common: list[Field] = []
    fields: list[Field] = []
    for m in _FIELD.finditer(text):
        f = _parse_field(m.group("decl"), int(m.group("off")), int(m.group("size")),
                         m.group("signed") == "1")
        (common if f.name.startswith("common_") else fields).append(f)
    if not any(f.name == "common_type" for f in common):
        raise FormatError(f"event {name.group(1)} has no common_type field")
    symbols: dict[str, list[dict[int, str]]] = {}
    fmt = text.split("print fmt:", 1)[1] if "print fmt:" in text else ""
    for m in _SYMBOLIC.finditer(fmt):
        table: dict[int, str] = {}
        symbols.setdefault(m.group(1), []).append(table)
        for value, plus, label in _PAIR.findall(m.group(2)):
            # C's adjacent literals: { 2, "KVM_EXIT_" "IO" }
            table.setdefault(int(value, 0) + int(plus or 0), "".join(re.findall(r'"([^"]*)"', label)))
    return EventFormat(name.group(1), int(ident.group(1)), fields, common, symbols, group)


def common_struct(fmt: EventFormat) -> struct.Struct:
    """A struct that reads (common_type, common_pid) from any record, placed where the
    kernel's format says (every event has the same common fields)."""
    ct = next((f for f in fmt.common if f.name == "common_type"), None)
    cp = next((f for f in fmt.common if f.name == "common_pid"), None)
    if ct is None or cp is None or ct.size not in (1, 2, 4) or cp.size != 4 \
            or cp.offset < ct.offset + ct.size:
        raise FormatError(f"event {fmt.name}: unexpected common_type/common_pid fields")
    return struct.Struct(f"<{ct.offset}x{_INT[ct.size].upper()}"
                         f"{cp.offset - ct.offset - ct.size}xi")


@dataclass(frozen=True)
class PageLayout:
    """``events/header_page`` and ``events/header_event``: where a ring-buffer page's
    timestamp, commit count and data are, and which ``type_len`` values are padding,
    time extends and absolute time stamps."""

    ts_offset: int = 0
    ts_size: int = 8
    commit_offset: int = 8
    commit_size: int = 8
    data_offset: int = 16
    padding: int = 29
    time_extend: int = 30
    time_stamp: int = 31
    data_max: int = 28


def parse_header_page(page_text: str, event_text: str) -> PageLayout:
    """The two header files' text (as the kernel prints them) as a :class:`PageLayout`."""
    spots: dict[str, tuple[int, int]] = {}
    for m in _FIELD.finditer(page_text):
        name = m.group("decl").split()[-1]
        spots.setdefault(name, (int(m.group("off")), int(m.group("size"))))
    try:
        ts, commit, data = spots["timestamp"], spots["commit"], spots["data"]
    except KeyError as e:
        raise FormatError(f"header_page has no {e.args[0]} field") from None
    types = {k: int(v) for k, v in re.findall(r"(\w+)\s*:\s*type\s*==\s*(\d+)", event_text)}
    dmax = re.search(r"data max type_len\s*==\s*(\d+)", event_text)
    if ts[1] != 8 or commit[1] not in (4, 8):
        raise FormatError(f"header_page: timestamp size {ts[1]}, commit size {commit[1]}")
    return PageLayout(ts[0], ts[1], commit[0], commit[1], data[0],
                      types.get("padding", 29), types.get("time_extend", 30),
                      types.get("time_stamp", 31), int(dmax.group(1)) if dmax else 28)
