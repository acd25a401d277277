"""Request-scoped context: the correlation id (and metadata) of the current request.

A web adapter opens a scope per request; a saga started or an outbox event added inside
it records the scope's correlation id. Built on `contextvars`, so it follows asyncio
tasks and `contextvars.copy_context()` into threads.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any


def generate_correlation_id() -> str:
    """A fresh, random correlation id (32 lowercase hex characters)."""
    return uuid.uuid4().hex


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
        """Make a context current until `reset(token)`; generates an id when none is given."""
        context = RequestContext(
            correlation_id=correlation_id or generate_correlation_id(),
            metadata=MappingProxyType(dict(metadata)),
        )
        return _current.set(context)

    @staticmethod
    def reset(token: Token[RequestContext | None]) -> None:
        _current.reset(token)

    @staticmethod
    @contextmanager
    def scope(correlation_id: str | None = None, **metadata: Any) -> Iterator[RequestContext]:
        """A block during which a request context is current; restored on exit."""
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
