"""Claiming, renewing and releasing saga leases, written once against a sync Connection
(the async worker runs them through `AsyncConnection.run_sync`).

A claim is one statement: on PostgreSQL `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED)`, so concurrent workers never block on or double-claim a row; on SQLite the
same guarded `UPDATE ... RETURNING`, atomic because SQLite serialises writers. Every claim
bumps `lease_token`, fencing out whatever the previous holder still tries to write.

The give-up budget: a claim also records `claimed_at` and counts, in `stalled_claims`,
the claims in a row that ended without progress - no step finished (completed, failed or
compensated) since the previous claim. A run that ends through a known infrastructure
failure gives its count back (`release_leases(refund=True)`). After such stalled claims
the next claim's lease runs longer by a backoff (1 s doubling, at most
`MAX_CLAIM_BACKOFF_SECONDS`), so a saga that crashes its worker is retried more and more
slowly. A row whose context cannot be read is claimed like any other but reported apart
(`CorruptSaga`): it fails alone, it never breaks the claim of the others.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sagaz.errors import CorruptRowError
from sagaz.journal import SagaSnapshot
from sagaz.store.operations import SAGA_COLUMNS_AS_TEXT, snapshot_from_row
from sagaz.store.schema import RUNNABLE_SAGA_STATUSES, saga_steps, sagas
from sagaz.store.statements import insert_ignoring_conflicts

#: The longest a stalled saga's next claim is held back, on top of the lease.
MAX_CLAIM_BACKOFF_SECONDS = 30.0


def claim_backoff(stalled_claims: int) -> float:
    """Seconds added to the lease of a claim after `stalled_claims` claims in a row that
    made no progress: 0, then 1, 2, 4, ... at most MAX_CLAIM_BACKOFF_SECONDS."""
    if stalled_claims <= 0:
        return 0.0
    return min(2.0 ** (stalled_claims - 1), MAX_CLAIM_BACKOFF_SECONDS)


@dataclass(frozen=True, slots=True)
class CorruptSaga:
    """A claimed saga whose row cannot be read: the claim holds it so that it can be
    failed with `reason` (which names the column)."""

    saga_id: str
    saga_name: str
    lease_token: int
    reason: str


#: Prefix of the error a worker leaves on a saga no running worker knows.
UNKNOWN_SAGA_ERROR = "sagaz: no worker has saga"


def _runnable(now: datetime | sa.BindParameter[datetime]) -> sa.ColumnElement[bool]:
    return sa.and_(
        sagas.c.status.in_(RUNNABLE_SAGA_STATUSES),
        sa.or_(sagas.c.lease_expires_at.is_(None), sagas.c.lease_expires_at < now),
    )


def _progressed() -> sa.ColumnElement[bool]:
    """The previous claim made progress (or there was none): a step finished since."""
    finished_since = (
        sa.select(saga_steps.c.saga_id)
        .where(
            saga_steps.c.saga_id == sagas.c.id,
            saga_steps.c.finished_at >= sagas.c.claimed_at,
        )
        .exists()
    )
    return sa.or_(sagas.c.claimed_at.is_(None), finished_since)


#: The stalled-claim counts whose lease gets its own backoff (the rest get the maximum).
_BACKOFF_LEVELS = range(1, 2 + int(MAX_CLAIM_BACKOFF_SECONDS).bit_length())


def _at(name: str) -> sa.BindParameter[datetime]:
    return sa.bindparam(name, type_=sagas.c.updated_at.type)


def _lease_to() -> dict[str, Any]:
    """What every claim sets: the new owner and expiry (plus the backoff the saga's
    stalled claims earned), a new fencing token, one more attempt, the stalled-claims
    count, and no more "no worker has this saga" error. Bound by `_claim_parameters`."""
    progressed = _progressed()
    stalled = sagas.c.stalled_claims + 1
    expires = _at("claim_expires")
    return {
        "lease_owner": sa.bindparam("claim_owner", type_=sa.String),
        "lease_expires_at": sa.case(
            (progressed, expires),
            (stalled <= 0, expires),
            *((stalled == n, _at(f"claim_expires_{n}")) for n in _BACKOFF_LEVELS),
            else_=_at("claim_expires_max"),
        ),
        "lease_token": sagas.c.lease_token + 1,
        "attempts": sagas.c.attempts + 1,
        "stalled_claims": sa.case((progressed, 0), else_=stalled),
        "claimed_at": _at("claim_now"),
        "error": sa.case(
            (sagas.c.error.startswith(UNKNOWN_SAGA_ERROR), sa.null()), else_=sagas.c.error
        ),
        "updated_at": _at("claim_now"),
    }


def _claim_parameters(owner: str, lease_seconds: float, now: datetime) -> dict[str, Any]:
    """The values of a claim statement's parameters (see `_lease_to`)."""
    expires = now + timedelta(seconds=lease_seconds)
    parameters: dict[str, Any] = {
        "claim_owner": owner,
        "claim_now": now,
        "claim_expires": expires,
        "claim_expires_max": expires + timedelta(seconds=MAX_CLAIM_BACKOFF_SECONDS),
    }
    for n in _BACKOFF_LEVELS:
        parameters[f"claim_expires_{n}"] = expires + timedelta(seconds=claim_backoff(n))
    return parameters


@functools.cache
def _claim_statement(skip_locked: bool) -> sa.Update:
    """`claim_sagas`'s statement, built once (SQLAlchemy then reuses its cache key and
    compiled form): the oldest runnable sagas of the names in ``claim_names``, at most
    ``claim_limit``, leased (`_lease_to`); locked rows skipped on PostgreSQL."""
    now = _at("claim_now")
    candidates = (
        sa.select(sagas.c.id)
        .where(_runnable(now), sagas.c.name.in_(sa.bindparam("claim_names", expanding=True)))
        .order_by(sagas.c.created_at)
        .limit(sa.bindparam("claim_limit", type_=sa.Integer))
    )
    if skip_locked:
        candidates = candidates.with_for_update(skip_locked=True)
    return (
        sa.update(sagas)
        .where(sagas.c.id.in_(candidates.scalar_subquery()), _runnable(now))
        .values(_lease_to())
        .returning(*SAGA_COLUMNS_AS_TEXT)
    )


@functools.cache
def _claim_one_statement() -> sa.Update:
    """`claim_saga`'s statement, built once: the saga ``claim_id`` if runnable, leased."""
    return (
        sa.update(sagas)
        .where(sagas.c.id == sa.bindparam("claim_id", type_=sagas.c.id.type))
        .where(_runnable(_at("claim_now")))
        .values(_lease_to())
        .returning(*SAGA_COLUMNS_AS_TEXT)
    )


def _snapshots(
    rows: Sequence[sa.Row[Any]],
    corrupt: list[CorruptSaga] | None,
    traces: dict[str, str] | None = None,
) -> list[SagaSnapshot]:
    snapshots = []
    for row in rows:
        try:
            snapshots.append(snapshot_from_row(row))
        except CorruptRowError as error:
            if corrupt is None:
                raise
            corrupt.append(CorruptSaga(str(row.id), row.name, row.lease_token, str(error)))
            continue
        _keep_trace(row, traces)
    return snapshots


def _keep_trace(row: sa.Row[Any], traces: dict[str, str] | None) -> None:
    """The stored trace context (JSON text, read by `sagaz.tracing`) into `traces`."""
    if traces is not None and row.trace_context is not None:
        traces[str(row.id)] = row.trace_context


def claim_sagas(
    connection: sa.Connection,
    *,
    owner: str,
    names: Sequence[str],
    limit: int,
    lease_seconds: float,
    now: datetime,
    corrupt: list[CorruptSaga] | None = None,
    cancelled: set[str] | None = None,
    traces: dict[str, str] | None = None,
) -> list[SagaSnapshot]:
    """Lease up to `limit` runnable sagas named in `names`, oldest first, to `owner`.

    A claimed row that cannot be read is appended to `corrupt` (still leased to `owner`,
    for the caller to fail it) or, without that list, raises CorruptRowError. The ids of
    claimed PENDING or RUNNING sagas an operator asked to cancel are added to `cancelled`
    (see `sagaz.worker.cancel`). The stored trace contexts of the claimed sagas that have
    one go into `traces` (saga id -> JSON text)."""
    if limit <= 0 or not names:
        return []
    statement = _claim_statement(connection.dialect.name == "postgresql")
    parameters = _claim_parameters(owner, lease_seconds, now)
    parameters.update(claim_names=list(names), claim_limit=limit)
    rows = connection.execute(statement, parameters).all()
    if cancelled is not None:
        cancelled.update(str(row.id) for row in rows if _cancel_pending(row))
    return _snapshots(rows, corrupt, traces)


def _cancel_pending(row: sa.Row[Any]) -> bool:
    return row.cancel_requested_at is not None and row.status in ("pending", "running")


def renew_leases(
    connection: sa.Connection,
    *,
    owner: str,
    leases: dict[str, int],
    lease_seconds: float,
    now: datetime,
    cancelled: set[str] | None = None,
) -> set[str]:
    """Extend `owner`'s leases (saga id -> token); returns the ids still held. A lease
    never gets shorter (the claim's backoff stays). The held ids of PENDING or RUNNING
    sagas an operator asked to cancel are added to `cancelled`."""
    if not leases:
        return set()
    expires = now + timedelta(seconds=lease_seconds)
    later = sa.case((sagas.c.lease_expires_at > expires, sagas.c.lease_expires_at), else_=expires)
    rows = connection.execute(
        sa.update(sagas)
        .where(sagas.c.id.in_(sorted(leases)), sagas.c.lease_owner == owner)
        .values(lease_expires_at=later)
        .returning(sagas.c.id, sagas.c.lease_token, sagas.c.status, sagas.c.cancel_requested_at)
    )
    held = [row for row in rows if leases.get(str(row.id)) == row.lease_token]
    if cancelled is not None:
        cancelled.update(str(row.id) for row in held if _cancel_pending(row))
    return {str(row.id) for row in held}


def released_by_holder(connection: sa.Connection, *, leases: dict[str, int]) -> set[str]:
    """Of `leases` (saga id -> token) that a renewal no longer found held, the ids whose
    lease was given back (a finished run releases it) with nobody claiming the saga since
    (the token is unchanged): their runs were not taken over and must not be stopped."""
    if not leases:
        return set()
    rows = connection.execute(
        sa.select(sagas.c.id, sagas.c.lease_token).where(
            sagas.c.id.in_(sorted(leases)), sagas.c.lease_owner.is_(None)
        )
    )
    return {str(row.id) for row in rows if leases.get(str(row.id)) == row.lease_token}


def release_leases(
    connection: sa.Connection,
    *,
    owner: str,
    leases: dict[str, int],
    not_before: datetime | None = None,
    refund: bool = False,
) -> int:
    """Give leases back (graceful shutdown, a run that failed unexpectedly), so another
    worker can claim the sagas without waiting for expiry - at once, or from `not_before`
    on (a backoff). Fenced by token; returns how many were released.

    `refund`: the runs ended through an infrastructure failure (shutdown, a lost
    connection), not through the saga: their claims do not count as stalled."""
    values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": not_before}
    if refund:
        values["stalled_claims"] = sagas.c.stalled_claims - 1
    released = 0
    for saga_id, token in sorted(leases.items()):
        released += connection.execute(
            sa.update(sagas)
            .where(
                sagas.c.id == saga_id,
                sagas.c.lease_owner == owner,
                sagas.c.lease_token == token,
            )
            .values(values)
        ).rowcount
    return released


def mark_unknown_sagas(
    connection: sa.Connection,
    *,
    owner: str,
    known: Sequence[str],
    older_than: datetime,
    now: datetime,
) -> int:
    """Leave a visible error on runnable sagas that no worker has claimed since
    `older_than` and that this worker cannot run either (its registry lacks them). They
    stay runnable: the error is cleared when a worker that knows them claims them."""
    message = (
        sa.literal(f"{UNKNOWN_SAGA_ERROR} '")
        + sagas.c.name
        + sa.literal(
            f"' registered (last checked by worker {owner}); start a worker that imports it"
        )
    )
    statement = (
        sa.update(sagas)
        .where(
            _runnable(now),
            sagas.c.name.not_in(list(known)) if known else sa.true(),
            sagas.c.updated_at < older_than,
            sagas.c.error.is_(None),
        )
        .values(error=message)
    )
    return connection.execute(statement).rowcount


def claim_saga(
    connection: sa.Connection,
    saga_id: str,
    *,
    owner: str,
    lease_seconds: float,
    now: datetime,
    traces: dict[str, str] | None = None,
) -> SagaSnapshot | None:
    """Lease the one saga `saga_id` to `owner`, as `claim_sagas` would, and return it
    (its stored trace context into `traces`, as `claim_sagas` does).

    For a process that just recorded a saga and wants to run it itself (a web adapter's
    background run): the claim succeeds only while the saga is runnable and nobody holds
    a live lease on it, so it never runs twice at once, and it bumps `lease_token`,
    fencing out any earlier holder. Returns None - changing nothing - when the saga does
    not exist (not committed yet, or rolled back), is finished, or is leased to another
    owner.
    """
    parameters = _claim_parameters(owner, lease_seconds, now)
    parameters["claim_id"] = saga_id
    row = connection.execute(_claim_one_statement(), parameters).one_or_none()
    if row is None:
        return None
    snapshot = snapshot_from_row(row)
    _keep_trace(row, traces)
    return snapshot


def record_and_claim(
    connection: sa.Connection,
    row: dict[str, Any],
    *,
    owner: str,
    lease_seconds: float,
    now: datetime,
    traces: dict[str, str] | None = None,
) -> SagaSnapshot | None:
    """Insert the saga `row` (a `pending_saga_row`) unless its id exists, and lease it
    to `owner` in the same transaction, as `claim_saga` does.

    For a saga run in the process that records it: the row becomes visible to other
    workers only with the transaction's commit, already leased, so no worker can claim it
    while it runs here. An existing saga with that id is claimed instead (to resume it);
    None, changing nothing, when it is finished or leased to another owner."""
    connection.execute(insert_ignoring_conflicts(sagas, connection.dialect.name), [row])
    return claim_saga(
        connection,
        str(row["id"]),
        owner=owner,
        lease_seconds=lease_seconds,
        now=now,
        traces=traces,
    )


def resume_saga(connection: sa.Connection, saga_id: str, *, now: datetime) -> bool:
    """Hand a FAILED saga back to the workers, to compensate what it left undone.

    For an operator, once the cause is fixed: a saga given up while compensating (its
    error lists the steps not compensated), or one whose compensation failed. It becomes
    COMPENSATING with a fresh give-up budget and no lease, so the next worker claims it
    at once and compensates every step whose action succeeded and is not compensated yet
    (dependents first); compensated steps are not run again. Its error is kept until the
    run ends. Returns False, changing nothing, unless the saga exists and is FAILED.
    Runs in the caller's transaction (commit it).
    """
    statement = (
        sa.update(sagas)
        .where(sagas.c.id == saga_id, sagas.c.status == "failed")
        .values(
            status="compensating",
            stalled_claims=0,
            claimed_at=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )
    return bool(connection.execute(statement).rowcount)
