"""The outbox relay's statements, written once against a sync `Connection`.

The relay runs them from async code through `AsyncConnection.run_sync` (DESIGN rule 5);
tests and tools may call them directly. Each function is one statement (the claim adds
one planner setting on PostgreSQL), so one round trip per batch whatever the batch size,
and each write is fenced by `claim_owner`: a relay whose claim was taken over by another
relay changes nothing.

Claimable ("due") events are pending, have `next_attempt_at <= now` and are not claimed
(or their claim expired). Which of them a claim takes, and how per-key order is kept
across relays while the claim's cost stays bounded by the batch size, is described in
`sagaz.outbox.claim_query`. A dead-lettered event is no longer pending and stops
blocking its key.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.sql.elements import ColumnElement

from sagaz.outbox import claim_query
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.store.schema import Timestamp, outbox

PENDING = claim_query.PENDING
PUBLISHED = "published"
DEAD = "dead"

#: Longest `last_error` stored (the rest is cut).
MAX_ERROR_LENGTH = 2000


@dataclass(slots=True)
class ClaimedEvent:
    """An event this relay claimed: what to publish, and what a retry needs to know."""

    seq: int
    attempts: int
    next_attempt_at: datetime
    message: OutboxMessage
    problem: str | None = None
    """Why the row cannot be published (its payload or headers unreadable, the column
    named), or None. Such an event is claimed like the others, to be dead-lettered."""


@dataclass(frozen=True, slots=True)
class Failure:
    """An unpublished event to hand back.

    `counted` failures add one attempt, store `error` and wait until `next_attempt_at`
    (and are dead-lettered at `max_attempts`, or at once when `final`); uncounted ones
    (events held back behind a failed event of their key, or sent back by a broker
    outage) are released with their attempts and due time unchanged, storing `error`
    if they have one.
    """

    seq: int
    counted: bool
    next_attempt_at: datetime
    error: str | None = None
    final: bool = False
    """Dead-letter now, whatever the attempts (an event that can never be published)."""


@dataclass(frozen=True, slots=True)
class Settled:
    """What `settle_failures` wrote: events scheduled for a retry, and dead-lettered ones."""

    retried: frozenset[int]
    dead: frozenset[int]


def _seq_in(seqs: Sequence[int], dialect: str, name: str = "seqs") -> ColumnElement[bool]:
    if dialect == "postgresql":
        # One array parameter: the same SQL text (and prepared statement) for any batch size.
        return outbox.c.seq == sa.any_(
            sa.bindparam(name, list(seqs), type_=postgresql.ARRAY(sa.BigInteger()))
        )
    return outbox.c.seq.in_(list(seqs))


_STATEMENTS: dict[tuple[str, str], sa.Update] = {}

#: Planner settings of the claim's transaction on PostgreSQL (SET LOCAL): without them a
#: table whose statistics are missing or stale (a burst into a never-analysed table) gets
#: a bitmap scan of every pending row and a sort - minutes for 200,000 events - instead of
#: reading the pending index in order and stopping after the window.
_PLAN_SETTINGS = sa.text(
    "SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true)"
)


def _statement(kind: str, dialect: str) -> sa.Update:
    statement = _STATEMENTS.get((kind, dialect))
    if statement is None:
        build = claim_query.claim_statement if kind == "claim" else claim_query.defer_statement
        statement = _STATEMENTS[kind, dialect] = build(dialect)
    return statement


def claim_batch(
    connection: sa.Connection,
    *,
    owner: str,
    limit: int,
    now: datetime,
    expires: datetime,
    window: int | None = None,
) -> list[ClaimedEvent]:
    """Claim up to `limit` due events for `owner` until `expires`; returns them in seq order.

    One statement, whose cost is bounded by `window` (default `2 * limit`: how many of
    the oldest due events it looks at), whatever the backlog. The claim is visible to
    other relays once the caller's transaction commits; an event whose claim expires
    becomes claimable again. On PostgreSQL the rest of the caller's transaction runs with
    `enable_seqscan` and `enable_bitmapscan` off (SET LOCAL): give it a transaction of its
    own. An event whose payload or headers cannot be read (not JSON, headers not an
    object of strings) is claimed and returned with `problem` set, to be dead-lettered.
    """
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    window = 2 * limit if window is None else window
    if window < limit:
        raise ValueError(f"window must be >= limit ({limit}), got {window}")
    dialect = connection.dialect.name
    if dialect == "postgresql":
        connection.execute(_PLAN_SETTINGS)
    rows = connection.execute(
        _statement("claim", dialect),
        {"now": now, "owner": owner, "expires": expires, "limit": limit, "window": window},
    )
    events = [_claimed(*row) for row in rows]
    events.sort(key=lambda event: event.seq)
    return events


def explain_claim(
    connection: sa.Connection,
    *,
    now: datetime,
    limit: int,
    window: int | None = None,
    options: str = "ANALYZE, FORMAT JSON",
) -> list[Any]:
    """PostgreSQL's plan of one claim, as `EXPLAIN (options)` prints it (one row per line,
    or one JSON document). With ANALYZE the claim runs: roll the caller's transaction
    back. A diagnostic for the claim's cost on a given table (tests and benchmarks)."""
    statement = _statement("claim", "postgresql")
    compiled = statement.compile(dialect=connection.dialect)
    parameters = {
        **compiled.params,
        "now": now,
        "owner": "explain",
        "expires": now,
        "limit": limit,
        "window": 2 * limit if window is None else window,
    }
    connection.execute(_PLAN_SETTINGS)
    result = connection.exec_driver_sql(f"EXPLAIN ({options}) {compiled}", parameters)
    return [row[0] for row in result]


def defer_blocked(connection: sa.Connection, *, now: datetime, window: int) -> int:
    """Move the events among the `window` oldest due ones that wait behind a key head
    backing off to that head's next attempt time; returns how many moved.

    They could not be claimed before their head anyway; moved, they stop filling the
    claim's window, so events behind them are reached. One statement, bounded by
    `window`. Run it after `claim_batch` (same transaction) when that came back short.
    """
    return len(
        connection.execute(
            _statement("defer", connection.dialect.name), {"now": now, "window": window}
        ).all()
    )


def _claimed(
    seq: int,
    event_id: Any,
    topic: str,
    key: str | None,
    payload_text: str,
    headers_text: str,
    attempts: int,
    next_at: datetime,
    created: datetime | None,
    saga: Any,
) -> ClaimedEvent:
    # SQLite returns naive timestamps; every timestamp sagaz writes is UTC.
    if next_at.tzinfo is None:
        next_at = next_at.replace(tzinfo=UTC)
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    payload, headers, problem = decode_row(payload_text, headers_text)
    message = OutboxMessage(
        str(event_id),
        topic,
        payload,
        key,
        headers,
        created,
        None if saga is None else str(saga),
    )
    return ClaimedEvent(seq, attempts, next_at, message, problem)


def decode_row(payload_text: str, headers_text: str) -> tuple[Any, dict[str, str], str | None]:
    """The payload and headers of an outbox row from their stored JSON text, and what
    makes the row unpublishable (None when nothing): text that is not JSON, headers that
    are not an object of string values. The problem names the column."""
    try:
        payload = json.loads(payload_text)
    except (TypeError, ValueError) as error:
        return None, {}, f"payload is not valid JSON ({_short(error)}): {payload_text!r:.80}"
    try:
        headers = json.loads(headers_text)
    except (TypeError, ValueError) as error:
        return payload, {}, f"headers is not valid JSON ({_short(error)}): {headers_text!r:.80}"
    if not isinstance(headers, dict):
        return payload, {}, f"headers must be a JSON object, got {_json_kind(headers)}"
    for name, value in headers.items():
        if not isinstance(value, str):
            return (
                payload,
                {},
                f"headers must map names to strings, got {_json_kind(value)} for {name!r:.80}",
            )
    return payload, headers, None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if value is None:
        return "null"
    return "an object"


def _short(error: BaseException) -> str:
    return str(error).split("\n")[0][:200]


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
    time, and dead-letters the event (status 'dead') once it reached `max_attempts` - or
    at once for a `final` failure.
    """
    if not failures:
        return Settled(frozenset(), frozenset())
    counted = [failure for failure in failures if failure.counted]
    final = [failure.seq for failure in failures if failure.final]
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
    explained = [failure for failure in failures if failure.counted or failure.error]
    if explained:
        last_error = sa.case(
            {failure.seq: sa.literal(_cut(failure.error), sa.Text()) for failure in explained},
            value=outbox.c.seq,
            else_=outbox.c.last_error,
        )
    dead: ColumnElement[bool] = attempts >= max_attempts
    if final:
        dead = sa.or_(dead, _seq_in(final, connection.dialect.name, "final"))
    statement = (
        sa.update(outbox)
        .where(_seq_in([failure.seq for failure in failures], connection.dialect.name))
        .where(outbox.c.claim_owner == owner)
        .where(outbox.c.status == PENDING)
        .values(
            attempts=attempts,
            next_attempt_at=next_attempt_at,
            last_error=last_error,
            status=sa.case((dead, DEAD), else_=PENDING),
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
