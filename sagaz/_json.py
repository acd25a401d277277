"""Checks that a value can be stored as JSON, naming the offending key when it cannot."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sagaz.errors import InvalidContextError


def ensure_json_object(value: Any, what: str) -> dict[str, Any]:
    """Return `value` as a plain dict after checking it is a JSON object.

    Raises InvalidContextError naming the path of the first value that is not plain JSON
    (str keys; str, int, float, bool, None, list, tuple, dict values; no NaN/infinity and
    no NUL character, which PostgreSQL's JSONB refuses).
    """
    if not isinstance(value, Mapping):
        raise InvalidContextError(f"{what} must be a mapping, got {type(value).__name__}")
    _check(value, what)
    return dict(value)


def ensure_json_value(value: Any, what: str) -> Any:
    """Return `value` after checking it is plain JSON (any JSON value, not only objects)."""
    _check(value, what)
    return value


def _check(value: Any, path: str) -> None:
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidContextError(f"{path} contains a NUL character, which JSON cannot store")
        return
    if value is None or isinstance(value, bool | int):
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidContextError(f"{path} is {value!r}, which JSON cannot store")
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidContextError(
                    f"{path} has a key {key!r} of type {type(key).__name__}; JSON keys must be str"
                )
            if "\x00" in key:
                raise InvalidContextError(f"{path} has a key {key!r} with a NUL character")
            _check(item, f"{path}[{key!r}]")
        return
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _check(item, f"{path}[{index}]")
        return
    raise InvalidContextError(
        f"{path} is a {type(value).__name__} ({_short_repr(value)}), which is not JSON-serialisable"
    )


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dumps(value: Any) -> str:
    """Compact, deterministic JSON used wherever sagaz stores or hashes a document."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
