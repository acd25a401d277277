"""Dead-lettered outbox events: list, re-queue, purge.

Each function that takes a `bind` accepts a sync `Connection` or `Engine`, or an async one
(then it returns an awaitable); see `sagaz.outbox.binds`. The connection-level functions
(`read_dead`, `requeue`, `purge`, `count_dead`) run in the caller's transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, overload

import sqlalchemy as sa

from sagaz._util import utcnow
from sagaz.outbox.binds import AsyncBind, SyncBind
from sagaz.outbox.binds import run_on_bind as _run
from sagaz.outbox.claims import DEAD, PENDING, decode_row
from sagaz.store.operations import as_utc
from sagaz.store.schema import outbox
from sagaz.store.statements import OUTBOX_CHANNEL


@dataclass(frozen=True, slots=True)
class DeadEvent:
    """A dead-lettered outbox event."""

    id: str
    seq: int
    topic: str
    key: str | None
    payload: Any
    headers: dict[str, str]
    attempts: int
    last_error: str | None
    created_at: datetime | None
    saga_id: str | None


def read_dead(
    connection: sa.Connection,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
    ids: Iterable[str] | None = None,
) -> list[DeadEvent]:
    """Dead-lettered events in publish order (seq), `limit` at a time after `after_seq`
    (only those with these `ids`, when given).
    A row whose payload is not JSON shows its stored text as the payload; headers that
    are not an object of strings show as `{}` (`last_error` says what was wrong)."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    columns = [column for column in outbox.c if column.name not in ("payload", "headers")]
    query = (
        sa.select(
            *columns,
            # As text: a row dead-lettered because it could not be read is listed too.
            sa.cast(outbox.c.payload, sa.Text()).label("payload"),
            sa.cast(outbox.c.headers, sa.Text()).label("headers"),
        )
        .where(outbox.c.status == DEAD)
        .order_by(outbox.c.seq)
        .limit(limit)
    )
    if topic is not None:
        query = query.where(outbox.c.topic == topic)
    if after_seq is not None:
        query = query.where(outbox.c.seq > after_seq)
    if ids is not None:
        query = query.where(outbox.c.id.in_(_checked_ids(ids)))
    events = []
    for row in connection.execute(query):
        payload, headers, problem = decode_row(row.payload, row.headers)
        events.append(
            DeadEvent(
                id=str(row.id),
                seq=row.seq,
                topic=row.topic,
                key=row.key,
                payload=row.payload if problem and problem.startswith("payload") else payload,
                headers=headers,
                attempts=row.attempts,
                last_error=row.last_error,
                created_at=as_utc(row.created_at),
                saga_id=None if row.saga_id is None else str(row.saga_id),
            )
        )
    return events


@overload
def list_dead(
    bind: SyncBind,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
    ids: Iterable[str] | None = None,
) -> list[DeadEvent]: ...
@overload
def list_dead(
    bind: AsyncBind,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
    ids: Iterable[str] | None = None,
) -> Awaitable[list[DeadEvent]]: ...
def list_dead(
    bind: SyncBind | AsyncBind,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
    ids: Iterable[str] | None = None,
) -> list[DeadEvent] | Awaitable[list[DeadEvent]]:
    """Dead-lettered events, oldest first, optionally of one topic or with these `ids`
    (ValueError for one that is not a UUID); page with `after_seq` (the last `seq` seen).
    Read-only. Awaitable for async binds."""
    id_list = None if ids is None else _checked_ids(ids)
    return _run(  # type: ignore[no-any-return]
        bind,
        lambda connection: read_dead(
            connection, topic=topic, limit=limit, after_seq=after_seq, ids=id_list
        ),
        "read",
    )


def requeue(
    connection: sa.Connection,
    ids: Iterable[str] | None = None,
    *,
    topic: str | None = None,
    now: datetime | None = None,
) -> int:
    """Put dead-lettered events back in the queue; returns how many (see `requeue_dead`)."""
    where = _dead_events(ids, topic)
    if where is None:
        return 0
    result = connection.execute(
        sa.update(outbox)
        .where(*where)
        .values(
            status=PENDING,
            attempts=0,
            next_attempt_at=now or utcnow(),
            claim_owner=None,
            claim_expires_at=None,
        )
    )
    count = result.rowcount
    if count and connection.dialect.name == "postgresql":
        # Delivered at commit: relays in every process wake up at once.
        connection.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, sa.func.current_schema())))
    return count


@overload
def requeue_dead(
    bind: SyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int: ...
@overload
def requeue_dead(
    bind: AsyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> Awaitable[int]: ...
def requeue_dead(
    bind: SyncBind | AsyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int | Awaitable[int]:
    """Re-queue dead-lettered events: the ones with these `ids` (None: all of them),
    optionally only of `topic`. Each becomes pending again with its attempts reset and is
    due at once; returns how many were re-queued (ids that are not dead are ignored).

    A re-queued keyed event blocks the later pending events of its key again until it is
    published, but later events of its key that were published meanwhile stay published:
    the re-queued one arrives after them. Raises ValueError for an id that is not a UUID,
    before anything is written. Awaitable for async binds.
    """
    id_list = None if ids is None else _checked_ids(ids)
    return _run(  # type: ignore[no-any-return]
        bind, lambda connection: requeue(connection, id_list, topic=topic), "write"
    )


def purge(
    connection: sa.Connection, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int:
    """Delete dead-lettered events; returns how many (see `purge_dead`)."""
    where = _dead_events(ids, topic)
    return 0 if where is None else connection.execute(sa.delete(outbox).where(*where)).rowcount


def count_dead(
    connection: sa.Connection, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int:
    """How many dead-lettered events `requeue_dead` or `purge_dead` with these arguments
    would change now (for a confirmation question)."""
    where = _dead_events(ids, topic)
    if where is None:
        return 0
    return int(connection.execute(sa.select(sa.func.count()).where(*where)).scalar_one())


def _dead_events(
    ids: Iterable[str] | None, topic: str | None
) -> list[sa.ColumnElement[bool]] | None:
    """What selects the dead events with these `ids` (None: all) of `topic`; None when
    `ids` is empty (nothing is selected)."""
    where = [outbox.c.status == DEAD]
    if ids is not None:
        id_list = _checked_ids(ids)
        if not id_list:
            return None
        where.append(outbox.c.id.in_(id_list))
    if topic is not None:
        where.append(outbox.c.topic == topic)
    return where


@overload
def purge_dead(
    bind: SyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int: ...
@overload
def purge_dead(
    bind: AsyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> Awaitable[int]: ...
def purge_dead(
    bind: SyncBind | AsyncBind, ids: Iterable[str] | None = None, *, topic: str | None = None
) -> int | Awaitable[int]:
    """Delete dead-lettered events for good: the ones with these `ids` (None: all of
    them), optionally only of `topic`; returns how many. Events that are not dead are
    never deleted. Raises ValueError for an id that is not a UUID, before anything is
    deleted. Awaitable for async binds."""
    id_list = None if ids is None else _checked_ids(ids)
    return _run(  # type: ignore[no-any-return]
        bind, lambda connection: purge(connection, id_list, topic=topic), "write"
    )


def _checked_ids(ids: Iterable[str]) -> list[str]:
    if isinstance(ids, str):
        raise TypeError("ids must be a collection of event ids, not a single str")
    checked = []
    for event_id in ids:
        try:
            checked.append(str(uuid.UUID(str(event_id))))
        except ValueError:
            raise ValueError(f"{event_id!r:.80} is not an outbox event id (a UUID)") from None
    return checked


__all__ = [
    "DeadEvent",
    "count_dead",
    "list_dead",
    "purge",
    "purge_dead",
    "read_dead",
    "requeue",
    "requeue_dead",
]
