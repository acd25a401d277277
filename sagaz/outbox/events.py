"""`outbox.add`: record an event inside the caller's own transaction."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from sagaz._json import ensure_json_value, text_problem
from sagaz._util import random_uuid, utcnow
from sagaz.context import current_correlation_id
from sagaz.errors import InvalidContextError
from sagaz.outbox.broker_rules import (
    MAX_HEADER_NAME_LENGTH,
    MAX_TOPIC_LENGTH,
    header_name_problem,
    header_value_problem,
    topic_problem,
)
from sagaz.signals import outbox_signal
from sagaz.store.schema import outbox
from sagaz.store.statements import OUTBOX_CHANNEL
from sagaz.store.unit_of_work import AnySession, queue_row, sync_session_of
from sagaz.tracing import add_trace_headers

__all__ = [
    "CORRELATION_HEADER",
    "MAX_HEADERS",
    "MAX_HEADER_NAME_LENGTH",
    "MAX_HEADER_VALUE_LENGTH",
    "MAX_KEY_LENGTH",
    "MAX_TOPIC_LENGTH",
    "add",
    "build_event_row",
]

CORRELATION_HEADER = "correlation-id"
"""The header `add` sets to the current correlation id (unless the caller set it)."""
MAX_KEY_LENGTH = 255
MAX_HEADERS = 32
MAX_HEADER_VALUE_LENGTH = 4096


def add(
    session: AnySession,
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    saga_id: str | uuid.UUID | None = None,
) -> str:
    """Add an event to the outbox through `session` and return its id.

    The event is written with the session's own flush or commit and published by the
    outbox relay only after that commit; if the transaction or the savepoint around this
    call rolls back, the event never existed. The id travels as the broker's message id.
    The current correlation id (see `sagaz.context`) is added as the `correlation-id`
    header unless `headers` sets it, and the current OpenTelemetry span's
    ``traceparent``/``tracestate`` unless `headers` sets a ``traceparent`` (see
    `sagaz.tracing`). Events with the same `key` are published in order.
    `saga_id` links the event to a saga (e.g. the id `start_saga` returned): a UUID, as
    a `uuid.UUID` or its str form; it is stored in canonical form and not checked against
    the sagas table.

    The payload is any JSON value (None is JSON ``null``); a mapping that is not a dict
    inside it is converted to a dict, and it reads back exactly (see `sagaz._json`).

    Raises InvalidContextError before anything is queued for: a topic, header name,
    header value or key that a supported broker would refuse or alter (the error names
    the broker rule; see `sagaz.outbox.broker_rules`: topics are 1 to 249 characters of
    `[A-Za-z0-9._-]` without empty dot-separated tokens); a payload that is not JSON or
    could not be read back (see `sagaz._json`); a key that is not a str of at most 255
    characters, or holds a NUL character or a lone surrogate; more than 32 headers, or
    values that are not str of at most 4096 characters without lone surrogates; a saga_id
    that is not a UUID. Nothing is awaited: the same call serves Session and AsyncSession.
    """
    sync_session = sync_session_of(session, "outbox.add")
    row = build_event_row(topic, payload, key=key, headers=headers, saga_id=saga_id)
    queue_row(sync_session, outbox, row, channel=OUTBOX_CHANNEL, signal=outbox_signal)
    return str(row["id"])


def build_event_row(
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    saga_id: str | uuid.UUID | None = None,
) -> dict[str, Any]:
    """The pending row of `sagaz_outbox` that `add` writes, validated; no I/O.

    Its "id" is a fresh UUID; the current correlation id is added as the
    `correlation-id` header unless `headers` sets it, and the trace headers as `add`
    adds them. Raises InvalidContextError as `add` does. For adapters that write the row
    through a connection of their own framework (e.g. Django's).
    """
    _check_topic(topic)
    payload = ensure_json_value(payload, "payload")
    if key is not None:
        _check_key(key)
    saga_uuid = None if saga_id is None else _checked_saga_id(saga_id)
    header_values = _checked_headers(headers)
    correlation_id = current_correlation_id()
    if correlation_id is not None:
        header_values.setdefault(CORRELATION_HEADER, correlation_id)
    add_trace_headers(header_values)
    now = utcnow()
    return {
        "id": random_uuid(),
        "topic": topic,
        "key": key,
        "payload": payload,
        "headers": header_values,
        "status": "pending",
        "attempts": 0,
        "next_attempt_at": now,
        "claim_owner": None,
        "claim_expires_at": None,
        "saga_id": saga_uuid,
        "created_at": now,
        "published_at": None,
        "last_error": None,
    }


def _check_topic(topic: object) -> None:
    if not isinstance(topic, str):
        raise InvalidContextError(f"topic must be a str, got {type(topic).__name__}")
    problem = topic_problem(topic)
    if problem is not None:
        raise InvalidContextError(f"topic {topic!r:.80} {problem}")


def _check_key(key: object) -> None:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        got = f"{len(key)} characters" if isinstance(key, str) else f"a {type(key).__name__}"
        raise InvalidContextError(
            f"key must be a str of at most {MAX_KEY_LENGTH} characters, got {got}"
        )
    _check_sent_text(key, "key", " (it travels as a header)")


def _check_sent_text(text: str, what: str, note: str = "") -> None:
    """Refuse `text` (named `what`) that could not be stored, or that a broker would
    refuse or alter as a header value."""
    problem = text_problem(text)
    if problem is not None:
        raise InvalidContextError(f"{what} contains {problem}, which cannot be stored")
    problem = header_value_problem(text)
    if problem is not None:
        raise InvalidContextError(f"{what} {problem}{note}")


#: A UUID in canonical text form (what `start_saga` returns): stored as given.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _checked_saga_id(saga_id: object) -> str:
    if isinstance(saga_id, uuid.UUID):
        return str(saga_id)
    if isinstance(saga_id, str) and _CANONICAL_UUID.fullmatch(saga_id):
        return saga_id
    if isinstance(saga_id, str) and len(saga_id) <= 45:
        try:
            return str(uuid.UUID(saga_id))
        except ValueError:
            pass
    raise InvalidContextError(
        f"saga_id must be a saga's UUID (as returned by start_saga), got {saga_id!r:.80}"
    )


def _checked_headers(headers: Mapping[str, str] | None) -> dict[str, str]:
    if headers is None:
        return {}
    if not isinstance(headers, Mapping):
        raise InvalidContextError(f"headers must be a mapping, got {type(headers).__name__}")
    if len(headers) > MAX_HEADERS:
        raise InvalidContextError(f"at most {MAX_HEADERS} headers are allowed, got {len(headers)}")
    checked: dict[str, str] = {}
    for name, value in headers.items():
        if not isinstance(name, str):
            raise InvalidContextError(f"header name {name!r:.80} must be a str")
        problem = header_name_problem(name)
        if problem is not None:
            raise InvalidContextError(f"header name {name!r:.80} {problem}")
        if not isinstance(value, str):
            raise InvalidContextError(
                f"header {name!r} must have a str value, got {type(value).__name__}"
            )
        if len(value) > MAX_HEADER_VALUE_LENGTH:
            raise InvalidContextError(
                f"header {name!r} value must be at most {MAX_HEADER_VALUE_LENGTH} characters, "
                f"got {len(value)}"
            )
        _check_sent_text(value, f"header {name!r} value")
        checked[name] = value
    return checked
