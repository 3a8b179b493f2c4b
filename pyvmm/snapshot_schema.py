"""The value checks a snapshot's JSON metadata is made of (``pyvmm.snapshot_file`` builds
its schema from them): each takes a value read from an untrusted file and the path that
names it (``vcpus[0].regs``), and returns it typed or raises :class:`SchemaError` saying
where and why.  Nothing here trusts a size, a count or a depth the file gives."""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Iterable
from typing import Any

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
MAX_STRING = 64 << 10
#: how deep device states may nest (lists and dicts in dicts): pyvmm's own go 3 deep
MAX_STATE_DEPTH = 8
#: the largest byte string a device state may hold (the metadata's own bound)
MAX_BLOB = 64 << 20


class SchemaError(Exception):
    """A value the schema refuses; the message says where and why."""


def show(v: Any) -> str:
    text = repr(v) if not isinstance(v, list | dict) else type(v).__name__
    return text if len(text) <= 40 else text[:37] + "..."


def integer(v: Any, where: str, lo: int = 0, hi: int = U64) -> int:
    if type(v) is not int or not lo <= v <= hi:
        raise SchemaError(f"{where} is {show(v)}, not an integer in {lo}..{hi:#x}")
    return v


def boolean(v: Any, where: str) -> bool:
    if type(v) is not bool:
        raise SchemaError(f"{where} is {show(v)}, not true or false")
    return v


def string(v: Any, where: str) -> str:
    if type(v) is not str or len(v) > MAX_STRING:
        raise SchemaError(f"{where} is {show(v)}, not a string")
    return v


def array(v: Any, where: str, n: int | None = None, most: int = 1 << 20) -> list[Any]:
    if type(v) is not list:
        raise SchemaError(f"{where} is {show(v)}, not a list")
    if (n is not None and len(v) != n) or len(v) > most:
        raise SchemaError(f"{where} has {len(v)} entries, not {n if n is not None else f'at most {most}'}")
    return v


def obj(v: Any, where: str, keys: Iterable[str]) -> dict[str, Any]:
    want = set(keys)
    if type(v) is not dict:
        raise SchemaError(f"{where} is {show(v)}, not an object")
    if set(v) != want:
        odd = sorted(set(v) ^ want)[:3]
        raise SchemaError(f"{where} has the wrong fields ({', '.join(map(repr, odd))})")
    return v


def blob(v: Any, where: str, lo: int, hi: int | None = None) -> bytes:
    """``{"b64": ...}`` of ``lo`` bytes (or ``lo..hi``)."""
    hi = lo if hi is None else hi
    s = obj(v, where, ("b64",))["b64"]
    if type(s) is not str or len(s) > 4 * (hi // 3 + 1):
        raise SchemaError(f"{where} is not base64 of at most {hi} bytes")
    try:
        data = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise SchemaError(f"{where} is not base64") from None
    if not lo <= len(data) <= hi:
        raise SchemaError(f"{where} is {len(data)} bytes, not {lo if lo == hi else f'{lo}..{hi}'}")
    return data


def opt_blob(v: Any, where: str, lo: int, hi: int | None = None) -> bytes | None:
    return None if v is None else blob(v, where, lo, hi)


def int_map(v: Any, where: str, most: int, key_hi: int) -> dict[int, int]:
    """``{"p": [[k, v], ...]}`` (an empty map is ``{"d": {}}``) of u32 keys, u64 values."""
    if v == {"d": {}}:
        return {}
    pairs = array(obj(v, where, ("p",))["p"], where, most=most)
    if all(type(p) is list and len(p) == 2 and type(p[0]) is int and type(p[1]) is int
           and 0 <= p[0] <= key_hi and 0 <= p[1] <= U64 for p in pairs):
        return {p[0]: p[1] for p in pairs}  # the usual case, at a lower cost per MSR
    out: dict[int, int] = {}
    for i, pair in enumerate(pairs):
        k, x = array(pair, f"{where}[{i}]", 2)
        out[integer(k, f"{where}[{i}] index", 0, key_hi)] = integer(x, f"{where}[{i}] value")
    return out


def state_value(v: Any, where: str, depth: int = 0) -> Any:
    """A device state value: plain data, nested at most MAX_STATE_DEPTH deep, numbers
    finite and within 64 bits (each device's set_state checks its own ranges)."""
    if depth > MAX_STATE_DEPTH:
        raise SchemaError(f"{where} nests deeper than {MAX_STATE_DEPTH}")
    if v is None or type(v) in (bool, str):
        return v
    if type(v) is int:
        return integer(v, where, -(1 << 63), U64)
    if type(v) is float:
        if not math.isfinite(v):
            raise SchemaError(f"{where} is {v}")
        return v
    if type(v) is list:
        return [state_value(x, where, depth + 1) for x in v]
    if type(v) is dict:
        if set(v) == {"b64"}:
            return blob(v, where, 0, MAX_BLOB)
        if set(v) == {"d"} and type(v["d"]) is dict:
            return {k: state_value(x, f"{where}.{k}", depth + 1) for k, x in v["d"].items()}
        if set(v) == {"p"} and type(v["p"]) is list:
            out = {}
            for pair in v["p"]:
                k, x = array(pair, where, 2)
                if type(k) not in (int, str):
                    raise SchemaError(f"{where} has a key {show(k)}")
                out[k] = state_value(x, f"{where}.{k}", depth + 1)
            return out
    raise SchemaError(f"{where} is {show(v)}, an unknown value encoding")
