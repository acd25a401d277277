"""JSON checks: what can be stored, and where the first thing that cannot is."""

from __future__ import annotations

import decimal
import enum
import json
import types
from typing import Any

import pytest

from sagaz import InvalidContextError
from sagaz._json import (
    MAX_DEPTH,
    MAX_INT_DIGITS,
    _check,
    _plain,
    dumps,
    ensure_json_object,
    ensure_json_value,
    text_problem,
)


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


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            {"a": ["ok", "x\ud800y"]},
            "context['a'][1] contains a lone surrogate '\\ud800' (at index 1)",
        ),
        ({"a": {"\udfffk": 1}}, "context['a'] has a key '\\udfffk' with a lone surrogate"),
        (
            {"n": [1, 10**MAX_INT_DIGITS]},
            f"context['n'][1] is an integer of more than {MAX_INT_DIGITS}",
        ),
        ({"n": -(10**MAX_INT_DIGITS)}, "context['n'] is an integer of more than"),
        ({"n": 10**5000}, "context['n'] is an integer of more than"),
    ],
)
def test_text_and_numbers_that_could_not_be_read_back_are_refused(value: Any, message: str) -> None:
    with pytest.raises(InvalidContextError) as caught:
        ensure_json_object(value, "context")
    assert message in str(caught.value)


def test_the_limits_themselves_pass() -> None:
    biggest = 10**MAX_INT_DIGITS - 1
    value = {"big": biggest, "small": -biggest, "text": "café 🎉 \u2028", "key é": True}
    assert ensure_json_object(value, "context") == value
    assert json.loads(dumps(value)) == value


def nested(levels: int) -> dict[str, Any]:
    """A document of `levels` containers, alternating objects and arrays."""
    document: Any = {}
    innermost = document
    for level in range(levels - 1):
        child: Any = [] if level % 2 else {}
        if isinstance(innermost, dict):
            innermost["x"] = child
        else:
            innermost.append(child)
        innermost = child
    return document  # type: ignore[no-any-return]


def test_nesting_is_limited_with_a_clear_error_not_a_recursion_error() -> None:
    assert ensure_json_object(nested(MAX_DEPTH), "context")
    with pytest.raises(InvalidContextError) as caught:
        ensure_json_object(nested(MAX_DEPTH + 1), "context")
    message = str(caught.value)
    assert message.startswith("context['x']['x'][0]['x'][0]['x']...(91 more)...")
    assert f"nests deeper than {MAX_DEPTH} levels" in message
    assert len(message) < 200
    with pytest.raises(InvalidContextError, match="nests deeper"):
        ensure_json_object(nested(100_000), "context")


def test_a_container_that_contains_itself_is_refused() -> None:
    loop: dict[str, Any] = {"id": 1}
    loop["self"] = loop
    with pytest.raises(InvalidContextError) as caught:
        ensure_json_object({"a": [loop]}, "context")
    assert str(caught.value) == (
        "context['a'][0]['self'] is a container that contains itself (a cycle)"
    )
    items: list[Any] = [1]
    items.append(items)
    with pytest.raises(InvalidContextError, match=r"payload\[1\] is a container that contains"):
        ensure_json_value(items, "payload")


def test_a_value_shared_by_two_keys_is_not_a_cycle() -> None:
    shared = {"sku": "a1"}
    value = {"first": shared, "second": [shared, shared]}
    assert ensure_json_object(value, "context") == value


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("plain", None),
        ("café 🎉", None),
        ("a\x00b", "a NUL character"),
        ("ok\udc80", "a lone surrogate '\\udc80' (at index 2)"),
    ],
)
def test_text_problem(text: str, problem: str | None) -> None:
    assert text_problem(text) == problem


class _Level(enum.IntEnum):
    LOW = 1


PLAIN: list[Any] = [
    {"s": "x", "i": 1, "f": -0.0, "b": False, "n": None, "l": [1, ["é"]], "d": {"k": {}}},
    [],
    "café 🎉",
    10**599,
    json.loads("[" * MAX_DEPTH + "]" * MAX_DEPTH),
]
NOT_PLAIN: list[Any] = [
    {"nul": "a\x00b"},
    {"key\x00": 1},
    {"lone": "\udc80"},
    {"big": -(10**600)},
    {"nan": float("nan")},
    {"inf": [float("inf")]},
    {1: "int key"},
    {"tuple": (1, 2)},
    {"enum": _Level.LOW},
    {"decimal": decimal.Decimal(1)},
    {"mapping": types.MappingProxyType({})},
    json.loads("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)),
]


@pytest.mark.parametrize("value", PLAIN)
def test_the_fast_check_passes_plain_values_unchanged(value: Any) -> None:
    """What the common-case check (`_plain`) passes, the full walk returns as the very
    same object: the shortcut changes nothing but the cost."""
    assert _plain(value, 0)
    assert _check(value, 0, set()) is value
    assert ensure_json_value(value, "payload") is value


@pytest.mark.parametrize("value", NOT_PLAIN)
def test_the_fast_check_leaves_what_must_be_refused_or_converted_to_the_walk(value: Any) -> None:
    assert not _plain(value, 0)


def test_a_cycle_is_named_although_the_fast_check_sees_only_depth() -> None:
    loop: list[Any] = []
    loop.append(loop)
    assert not _plain(loop, 0)
    with pytest.raises(InvalidContextError, match="contains itself"):
        ensure_json_value(loop, "payload")
