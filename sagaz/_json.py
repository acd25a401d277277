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

What passes is stored as the text `encode_document` writes and reads back equal, type
for type (``-0.0``, ``1e16`` and 600-digit integers included), except for these
conversions: a mapping that is not a dict becomes a dict (at the call), a tuple a list,
and subclasses of int, float and str (IntEnum, StrEnum, ...) their plain values.
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

    Any `Mapping` (MappingProxyType, UserDict, ...) is accepted as an object: the value
    returned is a copy in which every mapping that is not a dict became a dict, so what
    is stored is exactly what a read returns. Raises InvalidContextError naming the path
    of the first value that is not plain JSON (str keys; str, int, float, bool, None,
    list, tuple, mapping values) or that could not
    be stored and read back (see the module docstring: NUL characters, lone surrogates,
    integers longer than `MAX_INT_DIGITS` digits, NaN/infinity, nesting deeper than
    `MAX_DEPTH`, a container that contains itself).
    """
    if not isinstance(value, Mapping):
        raise InvalidContextError(f"{what} must be a mapping, got {type(value).__name__}")
    checked = _check_root(value, what)
    return checked if checked is not value else dict(value)


def ensure_json_value(value: Any, what: str) -> Any:
    """Return `value` after checking it is plain JSON (any JSON value, not only objects),
    with every mapping that is not a dict converted to one (see `ensure_json_object`)."""
    return _check_root(value, what)


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


def _check_root(value: Any, what: str) -> Any:
    if _plain(value, 0):
        return value
    try:
        return _check(value, 0, set())
    except _Refused as refused:
        path = _path(what, refused.segments[::-1])
        raise InvalidContextError(f"{path} {refused.reason}") from None


def _path(what: str, segments: list[object]) -> str:
    """`what['a'][0]...`, with the middle of a very deep path elided."""
    parts = [f"[{_short_repr(segment)}]" for segment in segments]
    if len(parts) > 12:
        parts = [*parts[:6], f"...({len(parts) - 9} more)...", *parts[-3:]]
    return what + "".join(parts)


def _plain(value: Any, depth: int) -> bool:
    """True when `value` needs neither a refusal nor a conversion: built of exact dicts
    with str keys, lists, str, int, float, bool and None only, every check passed. The
    common case, walked without copies, cycle bookkeeping or error paths; False sends
    the value to `_check`, which converts what it may and names what it refuses (a cycle
    shows here as nesting deeper than `MAX_DEPTH`)."""
    kind = type(value)
    if kind is str:
        return (value.isascii() and "\x00" not in value) or text_problem(value) is None
    if kind is int:
        return bool(-_INT_BOUND < value < _INT_BOUND)
    if kind is float:
        return math.isfinite(value)
    if value is None or kind is bool:
        return True
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not _plain(key, depth) or not _plain(item, depth + 1):
                return False
        return True
    if kind is list:
        for item in value:  # noqa: SIM110 - all() over a generator costs more, per request
            if not _plain(item, depth + 1):
                return False
        return True
    return False


def _check(value: Any, depth: int, active: set[int]) -> Any:
    """Refuse `value` (found inside `depth` containers, the ids of which are `active`);
    return it, or a copy in which every mapping that is not a dict became one."""
    if isinstance(value, str):
        if (not value.isascii() or "\x00" in value) and (problem := text_problem(value)):
            raise _Refused(f"contains {problem}, which JSON cannot store")
        return value
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -_INT_BOUND < value < _INT_BOUND:
            raise _Refused(
                f"is an integer of more than {MAX_INT_DIGITS} digits, which could not be "
                "read back; store it as a str"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _Refused(f"is {value!r}, which JSON cannot store")
        return value
    is_dict = isinstance(value, dict)
    is_mapping = is_dict or isinstance(value, Mapping)
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
    result = value
    if is_mapping:
        converted: dict[str, Any] | None = None if is_dict else {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _Refused(
                    f"has a key {_short_repr(key)} of type {type(key).__name__}; "
                    "JSON keys must be str"
                )
            if (not key.isascii() or "\x00" in key) and (problem := text_problem(key)):
                raise _Refused(f"has a key {_short_repr(key)} with {problem}")
            try:
                checked = _check(item, depth, active)
            except _Refused as refused:
                refused.segments.append(key)
                raise
            if converted is None and checked is not item:
                converted = dict(value)  # copy on the first change; the rest follows
            if converted is not None:
                converted[key] = checked
        if converted is not None:
            result = converted
    else:
        copied: list[Any] | None = None
        for index, item in enumerate(value):
            try:
                checked = _check(item, depth, active)
            except _Refused as refused:
                refused.segments.append(index)
                raise
            if checked is not item:
                if copied is None:
                    copied = list(value)
                copied[index] = checked
        if copied is not None:
            result = copied if isinstance(value, list) else tuple(copied)
    active.discard(identity)
    return result


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def encode_document(value: Any) -> str:
    """The JSON text sagaz stores for a checked `value`: keys in insertion order, floats
    as their shortest repr (so they load back bit for bit, ``-0.0`` included), integers in
    full, non-ASCII text as itself. Tuples become arrays; `int`, `float` and `str`
    subclasses (IntEnum, StrEnum...) their plain values."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def decode_document(text: str) -> Any:
    """The value of a document `encode_document` wrote."""
    return json.loads(text)


def dumps(value: Any) -> str:
    """Compact, deterministic JSON used wherever sagaz stores or hashes a document."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True, allow_nan=False)
