"""The snapshot metadata's value checks on their own (pure logic): every hostile shape a
file could hold is refused with a message naming where, and nothing the file says about
sizes, counts or depth is trusted."""

from __future__ import annotations

import base64
import math

import pytest

from pyvmm.snapshot_schema import (
    MAX_STATE_DEPTH,
    U64,
    SchemaError,
    array,
    blob,
    boolean,
    int_map,
    integer,
    obj,
    show,
    state_value,
    string,
)


def b64(data: bytes) -> dict[str, str]:
    return {"b64": base64.b64encode(data).decode()}


@pytest.mark.parametrize("v", [True, 1.0, "1", None, -1, U64 + 1])
def test_integer_refuses_what_is_not_an_int_in_range(v):
    with pytest.raises(SchemaError, match=r"^x\.y is .*not an integer in 0\.\.0x"):
        integer(v, "x.y")


def test_integer_bool_and_string_take_their_own_type_only():
    assert integer(U64, "n") == U64
    assert boolean(False, "b") is False
    with pytest.raises(SchemaError, match="not true or false"):
        boolean(0, "b")
    with pytest.raises(SchemaError, match="not a string"):
        string("x" * ((64 << 10) + 1), "s")


def test_array_counts_before_anything_is_read():
    assert array([1, 2], "a", 2) == [1, 2]
    with pytest.raises(SchemaError, match="a has 3 entries, not 2"):
        array([1, 2, 3], "a", 2)
    with pytest.raises(SchemaError, match="at most 4"):
        array([0] * 5, "a", most=4)
    with pytest.raises(SchemaError, match="not a list"):
        array({"0": 1}, "a")


def test_obj_wants_exactly_its_fields():
    with pytest.raises(SchemaError, match=r"o has the wrong fields \('extra'\)"):
        obj({"a": 1, "extra": 2}, "o", ("a",))
    with pytest.raises(SchemaError, match="not an object"):
        obj([], "o", ("a",))


def test_blob_bounds_the_text_before_decoding_it():
    assert blob(b64(b"abcd"), "s", 4) == b"abcd"
    with pytest.raises(SchemaError, match="s is 3 bytes, not 4"):
        blob(b64(b"abc"), "s", 4)
    with pytest.raises(SchemaError, match="at most 4 bytes"):  # refused unread: too long
        blob({"b64": "A" * 1000}, "s", 4)
    with pytest.raises(SchemaError, match="not base64"):
        blob({"b64": "@@@@"}, "s", 3)


def test_int_map_checks_each_pair():
    assert int_map({"d": {}}, "m", 4, 0xFFFF) == {}
    assert int_map({"p": [[1, 2], [3, U64]]}, "m", 4, 0xFFFF) == {1: 2, 3: U64}
    with pytest.raises(SchemaError, match=r"m\[0\] index is 65536"):
        int_map({"p": [[0x10000, 1]]}, "m", 4, 0xFFFF)
    with pytest.raises(SchemaError, match="m has 5 entries"):
        int_map({"p": [[i, i] for i in range(5)]}, "m", 4, 0xFFFF)


def test_state_values_nest_only_so_deep_and_stay_finite():
    v: object = 1
    for _ in range(MAX_STATE_DEPTH + 2):
        v = [v]
    with pytest.raises(SchemaError, match=f"nests deeper than {MAX_STATE_DEPTH}"):
        state_value(v, "devices.x")
    with pytest.raises(SchemaError, match="is nan"):
        state_value(math.nan, "devices.x")
    with pytest.raises(SchemaError, match="unknown value encoding"):
        state_value({"q": 1}, "devices.x")
    assert state_value({"p": [[1, b64(b"\x00")]]}, "d") == {1: b"\x00"}
    assert state_value({"d": {"a": [True, None, "s", -5, 0.5]}}, "d") == {"a": [True, None, "s", -5, 0.5]}


def test_show_keeps_messages_one_short_line():
    assert show("x" * 100).endswith("...") and len(show("x" * 100)) == 40
    assert show([1, 2]) == "list"
