"""Correlation ids: `correlation_id_from(raw_header)` keeps the client's value when it is
at most 128 characters of ``[A-Za-z0-9._:-]`` and otherwise makes a fresh id, so a
rejected value is never reflected anywhere; `validate_header_name` checks the configured
header name."""

from __future__ import annotations

import re
from collections.abc import Callable

from sagaz.context import (
    MAX_CORRELATION_ID_LENGTH,
    generate_correlation_id,
    is_valid_correlation_id,
)
from sagaz.errors import ConfigurationError

__all__ = [
    "CORRELATION_ID_HEADER",
    "MAX_CORRELATION_ID_LENGTH",
    "correlation_id_from",
    "generate_correlation_id",
    "is_valid_correlation_id",
    "validate_header_name",
]

CORRELATION_ID_HEADER = "X-Correlation-ID"
"""The request and response header every adapter reads and echoes by default."""


def correlation_id_from(raw: str | bytes | None) -> str:
    """The correlation id of a request whose header carried `raw`.

    A valid value (see `is_valid_correlation_id`) is kept; anything else - missing, empty,
    too long, control characters such as CR/LF, non-ASCII, undecodable bytes - is
    replaced by a fresh id, so a hostile value is never stored, logged or echoed. Bytes
    are read as ASGI/WSGI header bytes (latin-1).
    """
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if raw is not None and is_valid_correlation_id(raw):
        return raw
    return generate_correlation_id()


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


def validate_header_name(
    value: object, *, setting: str, error: Callable[[str], Exception] = ConfigurationError
) -> str:
    """`value` when it is a header name an adapter may read and echo (a str of ASCII
    letters, digits and ``-``, such as ``X-Request-ID``); otherwise raise `error` (default
    ConfigurationError, a ValueError) with a message naming `setting`."""
    if not isinstance(value, str) or _HEADER_NAME.fullmatch(value) is None:
        raise error(f"{setting} must be a header name such as X-Request-ID, got {value!r}")
    return value
