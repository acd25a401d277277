"""The outbox relay's statements, written once against a sync `Connection`.

The relay runs them from async code through `AsyncConnection.run_sync` (DESIGN rule 5);
tests and tools may call them directly. Each function is one statement, so one
round trip per batch whatever the batch size, and each write is fenced by `claim_owner`:
a relay whose claim was taken over by another relay changes nothing.

Claimable ("due") events are pending, have `next_attempt_at <= now` and are not claimed
(or their claim expired). Per-key order across relays rests on one rule: an event with a
key is claimed only as the *head* of its key (no earlier pending event with that key
exists, whatever its state) or as a *follower* of a head claimed in the same statement
(every pending event of the key between the head and it is due and unclaimed too). On
PostgreSQL the heads are locked with `FOR UPDATE SKIP LOCKED`; a relay that skips a
locked head sees it pending and so claims nothing of that key. A dead-lettered event is
no longer pending and stops blocking its key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.store.schema import Timestamp, outbox

PENDING = "pending"
PUBLISHED = "published"
DEAD = "dead"

_MAX_SEQ = 2**63 - 1

#: Longest `last_error` stored (the rest is cut).
MAX_ERROR_LENGTH = 2000


@dataclass(slots=True)
class ClaimedEvent:
    """An event this relay claimed: what to publish, and what a retry needs to know."""

    seq: int
    attempts: int
    next_attempt_at: datetime
    message: OutboxMessage


@dataclass(frozen=True, slots=True)
class Failure:
    """An unpublished event to hand back.

    `counted` failures add one attempt, store `error` and wait until `next_attempt_at`
    (and are dead-lettered at `max_attempts`); uncounted ones (events held back behind a
    failed event of their key) are only released, unchanged.
    """

    seq: int
    counted: bool
    next_attempt_at: datetime
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle_failures` wrote: events scheduled for a retry, and dead-lettered ones."""

    retried: frozenset[int]
    dead: frozenset[int]


def _now(name: str = "now") -> sa.BindParameter[datetime]:
    return sa.bindparam(name, type_=Timestamp)


def _unclaimed(table: sa.FromClause, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.or_(table.c.claim_expires_at.is_(None), table.c.claim_expires_at <= now)


def _ready(table: sa.FromClause, now: ColumnElement[Any]) -> ColumnElement[bool]:
    return sa.and_(table.c.next_attempt_at <= now, _unclaimed(table, now))


def _seq_in(seqs: Sequence[int], dialect: str) -> ColumnElement[bool]:
    if dialect == "postgresql":
        # One array parameter: the same SQL text (and prepared statement) for any batch size.
        return outbox.c.seq == sa.any_(
            sa.bindparam("seqs", list(seqs), type_=postgresql.ARRAY(sa.BigInteger()))
        )
    return outbox.c.seq.in_(list(seqs))


def claim_statement(dialect: str) -> sa.Update:
    """The claim of one batch: `UPDATE ... WHERE seq IN (heads and followers) RETURNING`.

    Parameters: `now`, `owner`, `expires` (the claim's expiry) and `limit`.
    """
    now = _now()
    limit = sa.bindparam("limit", type_=sa.Integer())
    head = outbox.alias("head")
    earlier = outbox.alias("earlier")
    earlier_pending = (
        sa.exists()
        .where(earlier.c.status == PENDING)
        .where(earlier.c.key == head.c.key)
        .where(earlier.c.seq < head.c.seq)
    )
    heads_query = (
        sa.select(head.c.seq, head.c.key)
        .where(head.c.status == PENDING)
        .where(_ready(head, now))
        .where(sa.or_(head.c.key.is_(None), ~earlier_pending))
        # The order of the partial index on pending rows: the scan stops after `limit`.
        .order_by(head.c.next_attempt_at, head.c.seq)
        .limit(limit)
    )
    if dialect == "postgresql":
        heads_query = heads_query.with_for_update(skip_locked=True, of=head)
    heads = heads_query.cte("heads")

    # Followers only fill the room the heads left: with many distinct keys the batch is
    # full of heads and no follower is looked for.
    room = (limit - sa.select(sa.func.count()).select_from(heads).scalar_subquery()).label("room")
    nxt = outbox.alias("nxt")
    if dialect == "postgresql":
        # The next `limit` pending events of each head's key, in order, kept up to the
        # first one that is not ready (a running AND over the key's events).
        upcoming = (
            sa.select(nxt.c.seq, _ready(nxt, now).label("ready"))
            .where(nxt.c.status == PENDING)
            .where(nxt.c.key == heads.c.key)
            .where(nxt.c.seq > heads.c.seq)
            .order_by(nxt.c.seq)
            .limit(room)
            .lateral("upcoming")
        )
        run = (
            sa.select(
                upcoming.c.seq,
                sa.func.bool_and(upcoming.c.ready)
                .over(partition_by=heads.c.seq, order_by=upcoming.c.seq)
                .label("unbroken"),
            )
            .select_from(heads.join(upcoming, sa.true()))
            .where(heads.c.key.is_not(None))
            .subquery("run")
        )
        followers = sa.select(run.c.seq).where(run.c.unbroken)
    else:
        blocker = outbox.alias("blocker")
        first_blocker = (
            sa.select(sa.func.min(blocker.c.seq))
            .where(blocker.c.status == PENDING)
            .where(blocker.c.key == heads.c.key)
            .where(blocker.c.seq > heads.c.seq)
            .where(~_ready(blocker, now))
            .scalar_subquery()
        )
        followers = (
            sa.select(nxt.c.seq)
            .select_from(
                heads.join(nxt, sa.and_(nxt.c.key == heads.c.key, nxt.c.seq > heads.c.seq))
            )
            .where(nxt.c.status == PENDING)
            .where(nxt.c.seq < sa.func.coalesce(first_blocker, _MAX_SEQ))
            .where(room > 0)
        )
    candidates = sa.union_all(sa.select(heads.c.seq), followers).subquery("candidates")
    # Cut by seq: a kept follower always keeps its (lower) head and the events between.
    chosen = sa.select(candidates.c.seq).order_by(candidates.c.seq).limit(limit)
    return (
        sa.update(outbox)
        # Re-checked by PostgreSQL against the latest row version before the update.
        .where(outbox.c.status == PENDING)
        .where(_unclaimed(outbox, now))
        .where(outbox.c.seq.in_(chosen))
        .values(claim_owner=sa.bindparam("owner"), claim_expires_at=_now("expires"))
        .returning(
            outbox.c.seq,
            outbox.c.id,
            outbox.c.topic,
            outbox.c.key,
            outbox.c.payload,
            outbox.c.headers,
            outbox.c.attempts,
            outbox.c.next_attempt_at,
            outbox.c.created_at,
            outbox.c.saga_id,
        )
    )


_CLAIM_STATEMENTS: dict[str, sa.Update] = {}


def claim_batch(
    connection: sa.Connection, *, owner: str, limit: int, now: datetime, expires: datetime
) -> list[ClaimedEvent]:
    """Claim up to `limit` due events for `owner` until `expires`; returns them in seq order.

    One statement. The claim is visible to other relays once the caller's transaction
    commits; an event whose claim expires becomes claimable again.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    dialect = connection.dialect.name
    statement = _CLAIM_STATEMENTS.get(dialect)
    if statement is None:
        statement = _CLAIM_STATEMENTS[dialect] = claim_statement(dialect)
    rows = connection.execute(
        statement, {"now": now, "owner": owner, "expires": expires, "limit": limit}
    )
    events = []
    for seq, event_id, topic, key, payload, headers, attempts, next_at, created, saga in rows:
        # SQLite returns naive timestamps; every timestamp sagaz writes is UTC.
        if next_at.tzinfo is None:
            next_at = next_at.replace(tzinfo=UTC)
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=UTC)
        message = OutboxMessage(
            str(event_id),
            topic,
            payload,
            key,
            headers if isinstance(headers, dict) else dict(headers or {}),
            created,
            None if saga is None else str(saga),
        )
        events.append(ClaimedEvent(seq, attempts, next_at, message))
    events.sort(key=lambda event: event.seq)
    return events


def mark_published(
    connection: sa.Connection, *, owner: str, seqs: Sequence[int], now: datetime
) -> set[int]:
    """Mark the events `owner` still holds among `seqs` published; returns those marked.

    One statement. Events claimed by another relay meanwhile are left alone.
    """
    if not seqs:
        return set()
    statement = (
        sa.update(outbox)
        .where(_seq_in(seqs, connection.dialect.name))
        .where(outbox.c.claim_owner == owner)
        .where(outbox.c.status == PENDING)
        .values(
            status=PUBLISHED,
            published_at=now,
            claim_owner=None,
            claim_expires_at=None,
            last_error=None,
        )
        .returning(outbox.c.seq)
    )
    return set(connection.execute(statement).scalars())


def settle_failures(
    connection: sa.Connection, *, owner: str, failures: Sequence[Failure], max_attempts: int
) -> Settled:
    """Hand back unpublished events `owner` still holds, releasing its claim on them.

    One statement. A counted failure adds an attempt, stores its error and next attempt
    time, and dead-letters the event (status 'dead') once it reached `max_attempts`.
    """
    if not failures:
        return Settled(frozenset(), frozenset())
    counted = [failure for failure in failures if failure.counted]
    attempts: ColumnElement[Any] = outbox.c.attempts
    next_attempt_at: ColumnElement[Any] = outbox.c.next_attempt_at
    last_error: ColumnElement[Any] = outbox.c.last_error
    if counted:
        attempts = outbox.c.attempts + sa.case(
            {failure.seq: 1 for failure in counted}, value=outbox.c.seq, else_=0
        )
        next_attempt_at = sa.case(
            {failure.seq: sa.literal(failure.next_attempt_at, Timestamp) for failure in counted},
            value=outbox.c.seq,
            else_=outbox.c.next_attempt_at,
        )
        last_error = sa.case(
            {failure.seq: sa.literal(_cut(failure.error), sa.Text()) for failure in counted},
            value=outbox.c.seq,
            else_=outbox.c.last_error,
        )
    statement = (
        sa.update(outbox)
        .where(_seq_in([failure.seq for failure in failures], connection.dialect.name))
        .where(outbox.c.claim_owner == owner)
        .where(outbox.c.status == PENDING)
        .values(
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            status=sa.case((attempts >= max_attempts, DEAD), else_=PENDING),
            claim_owner=None,
            claim_expires_at=None,
        )
        .returning(outbox.c.seq, outbox.c.status)
    )
    rows = connection.execute(statement).all()
    return Settled(
        retried=frozenset(row.seq for row in rows if row.status == PENDING),
        dead=frozenset(row.seq for row in rows if row.status == DEAD),
    )


def renew_claims(
    connection: sa.Connection, *, owner: str, seqs: Sequence[int], expires: datetime
) -> set[int]:
    """Extend `owner`'s claim on `seqs` to `expires`; returns the events still held."""
    if not seqs:
        return set()
    statement = (
        sa.update(outbox)
        .where(_seq_in(seqs, connection.dialect.name))
        .where(outbox.c.claim_owner == owner)
        .where(outbox.c.status == PENDING)
        .values(claim_expires_at=expires)
        .returning(outbox.c.seq)
    )
    return set(connection.execute(statement).scalars())


def _cut(error: str | None) -> str | None:
    if error is None or len(error) <= MAX_ERROR_LENGTH:
        return error
    return error[: MAX_ERROR_LENGTH - 1] + "…"
