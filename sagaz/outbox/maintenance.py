"""Outbox housekeeping: health counts and retention; the dead-letter functions
(`sagaz.outbox.dead_letters`) are importable from here too.

Each function takes a `bind`: a sync `Connection` or `Engine`, or an `AsyncConnection` or
`AsyncEngine` - in which case it returns an awaitable. The work itself is written once
against a sync `Connection` (DESIGN rule 5). Given a connection, the functions run in
the caller's transaction and leave committing to the caller; given an engine, they
commit on their own (retention once per batch, so no long transaction holds locks).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import utcnow
from sagaz.outbox.binds import AsyncBind, SyncBind
from sagaz.outbox.binds import run_on_bind as _run
from sagaz.outbox.claims import DEAD, PENDING, PUBLISHED
from sagaz.outbox.dead_letters import (
    DeadEvent,
    count_dead,
    list_dead,
    purge,
    purge_dead,
    read_dead,
    requeue,
    requeue_dead,
)
from sagaz.store.operations import as_utc
from sagaz.store.schema import inbox, outbox


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
class RetentionResult:
    """How many rows one retention run deleted."""

    published: int
    inbox: int


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


__all__ = [
    "DeadEvent",
    "OutboxHealth",
    "RetentionResult",
    "apply_retention",
    "count_dead",
    "delete_inbox_batch",
    "delete_published_batch",
    "list_dead",
    "outbox_health",
    "purge",
    "purge_dead",
    "read_dead",
    "read_health",
    "requeue",
    "requeue_dead",
    "retain",
]
