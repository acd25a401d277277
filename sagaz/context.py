"""Request-scoped context: the correlation id (and metadata) of the current request.

A web adapter opens a scope per request; a saga started or an outbox event added inside
it records the scope's correlation id. Built on `contextvars`, so it follows asyncio
tasks and `contextvars.copy_context()` into threads.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeGuard

from sagaz.errors import InvalidContextError

MAX_CORRELATION_ID_LENGTH = 128
"""The longest correlation id (the `correlation_id` column of `sagaz_sagas` holds 128)."""
_CORRELATION_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CORRELATION_ID_LENGTH}}}")


def generate_correlation_id() -> str:
    """A fresh, random correlation id (32 lowercase hex characters)."""
    return uuid.uuid4().hex


def is_valid_correlation_id(value: object) -> TypeGuard[str]:
    """True for a str of 1 to 128 characters of ``[A-Za-z0-9._:-]`` (ASCII only): safe to
    store, log, and echo in a header. The rule the web adapters apply to request headers."""
    return isinstance(value, str) and _CORRELATION_ID.fullmatch(value) is not None


def check_correlation_id(value: object) -> str:
    """`value` when it is a valid correlation id (see `is_valid_correlation_id`); otherwise
    InvalidContextError saying what is wrong (a bad value is shown escaped and cut short)."""
    if is_valid_correlation_id(value):
        return value
    if not isinstance(value, str):
        problem = f"a value of type {type(value).__name__}"
    elif len(value) > MAX_CORRELATION_ID_LENGTH:
        problem = f"{len(value)} characters long"
    else:
        problem = f"{value!r:.60}"
    raise InvalidContextError(
        f"correlation_id must be 1 to {MAX_CORRELATION_ID_LENGTH} characters of "
        f"[A-Za-z0-9._:-], got {problem}"
    )


@dataclass(frozen=True, slots=True)
class RequestContext:
    """The correlation id and free-form metadata of one request."""

    correlation_id: str
    metadata: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


_current: ContextVar[RequestContext | None] = ContextVar("sagaz_request_context", default=None)


class SagaContextManager:
    """Reads and scopes the current `RequestContext`."""

    @staticmethod
    def get() -> RequestContext | None:
        """The current request context, or None outside any scope."""
        return _current.get()

    @staticmethod
    def set(correlation_id: str | None = None, **metadata: Any) -> Token[RequestContext | None]:
        """Make a context current until `reset(token)`; generates an id when none is given.

        Raises InvalidContextError, setting nothing, for a correlation id that is not 1 to
        128 characters of ``[A-Za-z0-9._:-]`` (it is stored with every saga started and
        sent as a header with every event added in the scope). A web adapter that reads
        the id from a request header replaces a bad value instead (see
        `sagaz.integrations._base.correlation_id_from`).
        """
        context = RequestContext(
            correlation_id=(
                generate_correlation_id()
                if correlation_id is None
                else check_correlation_id(correlation_id)
            ),
            metadata=MappingProxyType(dict(metadata)),
        )
        return _current.set(context)

    @staticmethod
    def reset(token: Token[RequestContext | None]) -> None:
        _current.reset(token)

    @staticmethod
    @contextmanager
    def scope(correlation_id: str | None = None, **metadata: Any) -> Iterator[RequestContext]:
        """A block during which a request context is current; restored on exit. Raises
        as `set` does, before the block runs."""
        token = SagaContextManager.set(correlation_id, **metadata)
        try:
            context = _current.get()
            assert context is not None
            yield context
        finally:
            _current.reset(token)


def current_correlation_id() -> str | None:
    """The correlation id of the current scope, or None outside any scope."""
    context = _current.get()
    return context.correlation_id if context is not None else None
