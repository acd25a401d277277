"""`outbox.add`: record an event inside the caller's own transaction."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from sagaz._json import ensure_json_value, text_problem
from sagaz.context import current_correlation_id
from sagaz.errors import InvalidContextError
from sagaz.journal import utcnow
from sagaz.signals import outbox_signal
from sagaz.store.schema import outbox
from sagaz.store.statements import OUTBOX_CHANNEL
from sagaz.store.unit_of_work import AnySession, queue_row, sync_session_of

CORRELATION_HEADER = "correlation-id"
MAX_TOPIC_LENGTH = 255
MAX_KEY_LENGTH = 255
MAX_HEADERS = 32
MAX_HEADER_NAME_LENGTH = 128
MAX_HEADER_VALUE_LENGTH = 4096

_TOPIC = re.compile(r"[A-Za-z0-9._:/-]+")
_HEADER_NAME = re.compile(r"[A-Za-z0-9._:-]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


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
    header unless `headers` sets it. Events with the same `key` are published in order.
    `saga_id` links the event to a saga (e.g. the id `start_saga` returned): a UUID, as
    a `uuid.UUID` or its str form; it is stored in canonical form and not checked against
    the sagas table.

    Raises InvalidContextError before anything is queued for: a topic that is not a
    non-empty str of at most 255 characters of `[A-Za-z0-9._:/-]`; a payload that is not
    JSON or could not be read back (see `sagaz._json`); a key that is not a str of at most
    255 characters without NUL characters or lone surrogates; headers that are not a
    small mapping of str names to str values without control characters or lone
    surrogates; a saga_id that is not a UUID. Nothing is awaited: the same call serves
    Session and AsyncSession.
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
    `correlation-id` header unless `headers` sets it. Raises InvalidContextError as `add`
    does. For adapters that write the row through a connection of their own framework
    (e.g. Django's).
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
    now = utcnow()
    return {
        "id": str(uuid.uuid4()),
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
    if not isinstance(topic, str) or len(topic) > MAX_TOPIC_LENGTH or not _TOPIC.fullmatch(topic):
        raise InvalidContextError(
            f"topic must be a non-empty str of at most {MAX_TOPIC_LENGTH} characters from "
            f"[A-Za-z0-9._:/-], got {topic!r:.80}"
        )


def _check_key(key: object) -> None:
    if not isinstance(key, str) or len(key) > MAX_KEY_LENGTH:
        got = f"{len(key)} characters" if isinstance(key, str) else f"a {type(key).__name__}"
        raise InvalidContextError(
            f"key must be a str of at most {MAX_KEY_LENGTH} characters, got {got}"
        )
    problem = text_problem(key)
    if problem is not None:
        raise InvalidContextError(f"key contains {problem}, which cannot be stored")


def _checked_saga_id(saga_id: object) -> str:
    if isinstance(saga_id, uuid.UUID):
        return str(saga_id)
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
        if (
            not isinstance(name, str)
            or len(name) > MAX_HEADER_NAME_LENGTH
            or not _HEADER_NAME.fullmatch(name)
        ):
            raise InvalidContextError(
                f"header name {name!r:.80} must be a str of at most {MAX_HEADER_NAME_LENGTH} "
                "characters from [A-Za-z0-9._:-]"
            )
        if not isinstance(value, str):
            raise InvalidContextError(
                f"header {name!r} must have a str value, got {type(value).__name__}"
            )
        if (
            len(value) > MAX_HEADER_VALUE_LENGTH
            or _CONTROL.search(value)
            or text_problem(value) is not None
        ):
            raise InvalidContextError(
                f"header {name!r} value must be at most {MAX_HEADER_VALUE_LENGTH} characters "
                "with no control characters or lone surrogates"
            )
        checked[name] = value
    return checked
