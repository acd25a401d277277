"""JSON checks: what can be stored, and where the first thing that cannot is."""

from __future__ import annotations

import decimal
from typing import Any

import pytest

from sagaz import InvalidContextError
from sagaz._json import dumps, ensure_json_object


def test_plain_json_passes_and_is_copied() -> None:
    value = {"s": "x", "i": 1, "f": 1.5, "b": True, "n": None, "l": [1, [2]], "t": (3,), "d": {}}
    checked = ensure_json_object(value, "context")
    assert checked == value
    assert checked is not value
    assert type(checked) is dict


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"a": {"b": [1, {2}]}}, "context['a']['b'][1] is a set ({2}), which is not"),
        ({"a": decimal.Decimal("1.5")}, "context['a'] is a Decimal"),
        ({"a": b"bytes"}, "context['a'] is a bytes"),
        ({"a": float("inf")}, "context['a'] is inf, which JSON cannot store"),
        ({"a": float("-inf")}, "context['a'] is -inf"),
        ({"a": {("t",): 1}}, "context['a'] has a key ('t',) of type tuple"),
        ({1: "x"}, "context has a key 1 of type int; JSON keys must be str"),
        ({"a": ["ok", "nul\x00"]}, "context['a'][1] contains a NUL character"),
        ({"a": {"k\x00": 1}}, "context['a'] has a key 'k\\x00' with a NUL character"),
    ],
)
def test_first_offending_path_is_named(value: Any, message: str) -> None:
    with pytest.raises(InvalidContextError) as caught:
        ensure_json_object(value, "context")
    assert message in str(caught.value)


def test_long_values_are_shortened_in_messages() -> None:
    with pytest.raises(InvalidContextError) as caught:
        ensure_json_object({"a": {frozenset(range(100))}}, "payload")
    assert "..." in str(caught.value)
    assert len(str(caught.value)) < 200


def test_only_mappings_are_json_objects() -> None:
    with pytest.raises(InvalidContextError, match="payload must be a mapping, got list"):
        ensure_json_object([1], "payload")


def test_dumps_is_compact_and_deterministic() -> None:
    assert dumps({"b": 1, "a": [1, 2]}) == '{"a":[1,2],"b":1}'
    with pytest.raises(ValueError, match="JSON compliant"):
        dumps({"a": float("nan")})
