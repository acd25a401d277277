"""Strict comparison of JSON values: equal type for type, float bit for bit (-0.0 is not
0.0, 1e16 is not 10**16), and objects' keys in the same order."""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from typing import Any


def same(a: Any, b: Any) -> bool:
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a.hex() == b.hex()
    if isinstance(a, dict):
        return list(a) == list(b) and all(same(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def as_stored(value: Any) -> Any:
    """What a checked value reads back as: the documented conversions applied (any
    mapping -> dict, tuple -> list, int/float/str subclasses -> their plain values)."""
    if isinstance(value, Mapping):
        return {str(key): as_stored(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_stored(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, Enum):
        value = value.value
    for plain in (int, float, str):
        if isinstance(value, plain):
            return plain(value)
    return value
