"""Checks that a value can be stored as JSON, naming the offending key when it cannot.

The limits here are those of every place a document goes - PostgreSQL's JSONB, SQLite's
JSON text, Python's own `json` module reading it back, a broker's UTF-8 payload - so
anything that passes can be written *and* read back:

* strings (and keys) are valid Unicode without NUL: JSONB refuses ``\\u0000``, and a lone
  surrogate such as ``"\\ud800"`` cannot be encoded as UTF-8;
* integers have at most `MAX_INT_DIGITS` digits: Python refuses to convert longer ones to
  or from text (4,300 digits by default, as few as 640 when configured lower), so a
  longer one could be written but never loaded again;
* floats are finite (JSON has no NaN or infinity);
* containers nest at most `MAX_DEPTH` levels and never contain themselves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from sagaz.errors import InvalidContextError

#: How many containers (objects and arrays) a document may nest, the outermost included.
MAX_DEPTH = 100
#: The most digits an integer may have (its sign not counted).
MAX_INT_DIGITS = 600
_INT_BOUND = 10**MAX_INT_DIGITS


def ensure_json_object(value: Any, what: str) -> dict[str, Any]:
    """Return `value` as a plain dict after checking it is a JSON object.

    Raises InvalidContextError naming the path of the first value that is not plain JSON
    (str keys; str, int, float, bool, None, list, tuple, dict values) or that could not
    be stored and read back (see the module docstring: NUL characters, lone surrogates,
    integers longer than `MAX_INT_DIGITS` digits, NaN/infinity, nesting deeper than
    `MAX_DEPTH`, a container that contains itself).
    """
    if not isinstance(value, Mapping):
        raise InvalidContextError(f"{what} must be a mapping, got {type(value).__name__}")
    _check_root(value, what)
    return dict(value)


def ensure_json_value(value: Any, what: str) -> Any:
    """Return `value` after checking it is plain JSON (any JSON value, not only objects)."""
    _check_root(value, what)
    return value


def text_problem(text: str) -> str | None:
    """What in `text` cannot be stored as a database string or as JSON text ("a NUL
    character", "a lone surrogate ..."), or None when nothing. Cheap for ASCII text."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as error:
            return f"a lone surrogate {text[error.start]!r} (at index {error.start})"
    if "\x00" in text:
        return "a NUL character"
    return None


class _Refused(Exception):
    """Raised inside the walk; the path is assembled on the way out, so the walk itself
    never formats a path (it runs on every step result)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.segments: list[object] = []


def _check_root(value: Any, what: str) -> None:
    try:
        _check(value, 0, set())
    except _Refused as refused:
        path = _path(what, refused.segments[::-1])
        raise InvalidContextError(f"{path} {refused.reason}") from None


def _path(what: str, segments: list[object]) -> str:
    """`what['a'][0]...`, with the middle of a very deep path elided."""
    parts = [f"[{_short_repr(segment)}]" for segment in segments]
    if len(parts) > 12:
        parts = [*parts[:6], f"...({len(parts) - 9} more)...", *parts[-3:]]
    return what + "".join(parts)


def _check(value: Any, depth: int, active: set[int]) -> None:
    """Refuse `value` (found inside `depth` containers, the ids of which are `active`)."""
    if isinstance(value, str):
        if (not value.isascii() or "\x00" in value) and (problem := text_problem(value)):
            raise _Refused(f"contains {problem}, which JSON cannot store")
        return
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not -_INT_BOUND < value < _INT_BOUND:
            raise _Refused(
                f"is an integer of more than {MAX_INT_DIGITS} digits, which could not be "
                "read back; store it as a str"
            )
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"is {value!r}, which JSON cannot store")
        return
    is_mapping = type(value) is dict or isinstance(value, Mapping)
    if not (is_mapping or isinstance(value, list | tuple)):
        raise _Refused(
            f"is a {type(value).__name__} ({_short_repr(value)}), which is not JSON-serialisable"
        )
    if depth >= MAX_DEPTH:
        raise _Refused(f"nests deeper than {MAX_DEPTH} levels of objects and arrays")
    identity = id(value)
    if identity in active:
        raise _Refused("is a container that contains itself (a cycle)")
    active.add(identity)
    depth += 1
    if is_mapping:
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(
                    f"has a key {_short_repr(key)} of type {type(key).__name__}; "
                    "JSON keys must be str"
                )
            if (not key.isascii() or "\x00" in key) and (problem := text_problem(key)):
                raise _Refused(f"has a key {_short_repr(key)} with {problem}")
            try:
                _check(item, depth, active)
            except _Refused as refused:
                refused.segments.append(key)
                raise
    else:
        for index, item in enumerate(value):
            try:
                _check(item, depth, active)
            except _Refused as refused:
                refused.segments.append(index)
                raise
    active.discard(identity)


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def dumps(value: Any) -> str:
    """Compact, deterministic JSON used wherever sagaz stores or hashes a document."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
