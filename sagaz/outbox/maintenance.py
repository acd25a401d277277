"""Outbox housekeeping: health counts, dead letters, retention.

Each function takes a `bind`: a sync `Connection` or `Engine`, or an `AsyncConnection` or
`AsyncEngine` - in which case it returns an awaitable. The work itself is written once
against a sync `Connection` (DESIGN rule 5). Given a connection, the functions run in
the caller's transaction and leave committing to the caller; given an engine, they
commit on their own (retention once per batch, so no long transaction holds locks).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sagaz._util import utcnow
from sagaz.outbox.claims import DEAD, PENDING, PUBLISHED, decode_row
from sagaz.store.operations import as_utc
from sagaz.store.schema import inbox, outbox
from sagaz.store.statements import OUTBOX_CHANNEL

T = TypeVar("T")
SyncBind = sa.Connection | sa.Engine
AsyncBind = AsyncConnection | AsyncEngine
_Mode = Literal["read", "write", "batches"]


@dataclass(frozen=True, slots=True)
class OutboxHealth:
    """What a health endpoint reports about the outbox."""

    pending: int
    """Events not yet published (due, claimed, or waiting for a retry)."""
    dead: int
    """Dead-lettered events: they failed `max_attempts` times and wait for a requeue."""
    oldest_pending_age: float | None
    """Seconds since the oldest pending event was written; None when nothing is pending."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "pending": self.pending,
            "dead": self.dead,
            "oldest_pending_age_seconds": self.oldest_pending_age,
        }


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


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """How many rows one retention run deleted."""

    published: int
    inbox: int


def _run(bind: SyncBind | AsyncBind, work: Callable[[sa.Connection], T], mode: _Mode) -> Any:
    """Run `work` on a sync connection from `bind` (see the module docstring)."""
    if isinstance(bind, sa.Connection):
        return work(bind)
    if isinstance(bind, sa.Engine):
        if mode == "write":
            with bind.begin() as connection:
                return work(connection)
        with bind.connect() as connection:
            result = work(connection)
            connection.commit()
            return result
    if isinstance(bind, AsyncConnection):
        return bind.run_sync(work)
    if isinstance(bind, AsyncEngine):
        return _run_async(bind, work, mode)
    raise TypeError(
        "expected a SQLAlchemy Connection, Engine, AsyncConnection or AsyncEngine, "
        f"got {type(bind).__name__}"
    )


async def _run_async(engine: AsyncEngine, work: Callable[[sa.Connection], T], mode: _Mode) -> T:
    if mode == "write":
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    async with engine.connect() as connection:
        result = await connection.run_sync(work)
        await connection.commit()
        return result


# -- health -------------------------------------------------------------------------------


def read_health(connection: sa.Connection, *, now: datetime | None = None) -> OutboxHealth:
    """The outbox's counts, in one query that uses the pending and status indexes."""
    pending = sa.select(sa.func.count()).where(outbox.c.status == PENDING).scalar_subquery()
    dead = sa.select(sa.func.count()).where(outbox.c.status == DEAD).scalar_subquery()
    oldest = sa.select(sa.func.min(outbox.c.created_at)).where(outbox.c.status == PENDING)
    row = connection.execute(
        sa.select(pending.label("pending"), dead.label("dead"), oldest.scalar_subquery())
    ).one()
    oldest_at = as_utc(row[2])
    age = None if oldest_at is None else max(0.0, ((now or utcnow()) - oldest_at).total_seconds())
    return OutboxHealth(pending=row.pending, dead=row.dead, oldest_pending_age=age)


@overload
def outbox_health(bind: SyncBind, *, now: datetime | None = None) -> OutboxHealth: ...
@overload
def outbox_health(bind: AsyncBind, *, now: datetime | None = None) -> Awaitable[OutboxHealth]: ...
def outbox_health(
    bind: SyncBind | AsyncBind, *, now: datetime | None = None
) -> OutboxHealth | Awaitable[OutboxHealth]:
    """Counts for health endpoints: pending events, dead-lettered events, and the age in
    seconds of the oldest pending event. Read-only. Awaitable for async binds."""
    return _run(bind, lambda connection: read_health(connection, now=now), "read")  # type: ignore[no-any-return]


# -- dead letters -------------------------------------------------------------------------


def read_dead(
    connection: sa.Connection,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
) -> list[DeadEvent]:
    """Dead-lettered events in publish order (seq), `limit` at a time after `after_seq`.
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
    bind: SyncBind, *, topic: str | None = None, limit: int = 100, after_seq: int | None = None
) -> list[DeadEvent]: ...
@overload
def list_dead(
    bind: AsyncBind, *, topic: str | None = None, limit: int = 100, after_seq: int | None = None
) -> Awaitable[list[DeadEvent]]: ...
def list_dead(
    bind: SyncBind | AsyncBind,
    *,
    topic: str | None = None,
    limit: int = 100,
    after_seq: int | None = None,
) -> list[DeadEvent] | Awaitable[list[DeadEvent]]:
    """Dead-lettered events, oldest first, optionally of one topic; page with `after_seq`
    (the last `seq` seen). Read-only. Awaitable for async binds."""
    return _run(  # type: ignore[no-any-return]
        bind,
        lambda connection: read_dead(connection, topic=topic, limit=limit, after_seq=after_seq),
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
    query = sa.update(outbox).where(outbox.c.status == DEAD)
    if ids is not None:
        id_list = _checked_ids(ids)
        if not id_list:
            return 0
        query = query.where(outbox.c.id.in_(id_list))
    if topic is not None:
        query = query.where(outbox.c.topic == topic)
    result = connection.execute(
        query.values(
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


# -- retention ----------------------------------------------------------------------------


def delete_published_batch(connection: sa.Connection, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` events published before `before`; returns how many."""
    victims = (
        sa.select(outbox.c.seq)
        .where(outbox.c.status == PUBLISHED)
        .where(outbox.c.published_at < before)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        victims = victims.with_for_update(skip_locked=True)
    return connection.execute(sa.delete(outbox).where(outbox.c.seq.in_(victims))).rowcount


def delete_inbox_batch(connection: sa.Connection, *, before: datetime, limit: int) -> int:
    """Delete up to `limit` inbox rows received before `before`; returns how many."""
    victims = (
        sa.select(inbox.c.consumer, inbox.c.message_id)
        .where(inbox.c.received_at < before)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        victims = victims.with_for_update(skip_locked=True)
    return connection.execute(
        sa.delete(inbox).where(sa.tuple_(inbox.c.consumer, inbox.c.message_id).in_(victims))
    ).rowcount


def retain(
    connection: sa.Connection,
    *,
    published_retention: timedelta | None,
    inbox_retention: timedelta | None,
    batch_size: int = 1000,
    max_batches: int | None = None,
    commit_each_batch: bool = False,
    now: datetime | None = None,
) -> RetentionResult:
    """Delete published events and inbox rows older than their retention, `batch_size`
    rows per statement, at most `max_batches` statements per table (None: until done)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    now = now or utcnow()
    totals: list[int] = []
    jobs: Sequence[tuple[timedelta | None, Callable[..., int]]] = (
        (published_retention, delete_published_batch),
        (inbox_retention, delete_inbox_batch),
    )
    for retention, delete_batch in jobs:
        total = 0
        if retention is not None:
            batches = 0
            while max_batches is None or batches < max_batches:
                deleted = delete_batch(connection, before=now - retention, limit=batch_size)
                if commit_each_batch:
                    connection.commit()
                total += deleted
                batches += 1
                if deleted < batch_size:
                    break
        totals.append(total)
    return RetentionResult(published=totals[0], inbox=totals[1])


@overload
def apply_retention(
    bind: SyncBind,
    *,
    published_retention: timedelta | None,
    inbox_retention: timedelta | None,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> RetentionResult: ...
@overload
def apply_retention(
    bind: AsyncBind,
    *,
    published_retention: timedelta | None,
    inbox_retention: timedelta | None,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> Awaitable[RetentionResult]: ...
def apply_retention(
    bind: SyncBind | AsyncBind,
    *,
    published_retention: timedelta | None,
    inbox_retention: timedelta | None,
    batch_size: int = 1000,
    max_batches: int | None = None,
) -> RetentionResult | Awaitable[RetentionResult]:
    """Delete published outbox events older than `published_retention` and inbox rows
    older than `inbox_retention` (None keeps them), in batches of `batch_size`.

    Pending and dead-lettered events are never deleted. Given an engine, each batch
    commits on its own; given a connection, everything happens in the caller's
    transaction. Safe to run from several processes at once. Awaitable for async binds.
    """
    engine_given = isinstance(bind, sa.Engine | AsyncEngine)
    return _run(  # type: ignore[no-any-return]
        bind,
        lambda connection: retain(
            connection,
            published_retention=published_retention,
            inbox_retention=inbox_retention,
            batch_size=batch_size,
            max_batches=max_batches,
            commit_each_batch=engine_given,
        ),
        "batches",
    )
