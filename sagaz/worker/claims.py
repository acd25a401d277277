"""Claiming, renewing and releasing saga leases, written once against a sync Connection
(the async worker runs them through `AsyncConnection.run_sync`).

A claim is one statement: on PostgreSQL `UPDATE ... WHERE id IN (SELECT ... FOR UPDATE
SKIP LOCKED)`, so concurrent workers never block on or double-claim a row; on SQLite the
same guarded `UPDATE ... RETURNING`, atomic because SQLite serialises writers. Every claim
bumps `lease_token`, fencing out whatever the previous holder still tries to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from sagaz.journal import SagaSnapshot
from sagaz.store.operations import snapshot_from_row
from sagaz.store.schema import RUNNABLE_SAGA_STATUSES, sagas

#: Prefix of the error a worker leaves on a saga no running worker knows.
UNKNOWN_SAGA_ERROR = "sagaz: no worker has saga"


def _runnable(now: datetime) -> sa.ColumnElement[bool]:
    return sa.and_(
        sagas.c.status.in_(RUNNABLE_SAGA_STATUSES),
        sa.or_(sagas.c.lease_expires_at.is_(None), sagas.c.lease_expires_at < now),
    )


def _lease_to(owner: str, lease_seconds: float, now: datetime) -> dict[str, Any]:
    """What every claim sets: the new owner and expiry, a new fencing token, one more
    attempt, and no more "no worker has this saga" error."""
    return {
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "lease_token": sagas.c.lease_token + 1,
        "attempts": sagas.c.attempts + 1,
        "error": sa.case(
            (sagas.c.error.startswith(UNKNOWN_SAGA_ERROR), sa.null()), else_=sagas.c.error
        ),
        "updated_at": now,
    }


def claim_sagas(
    connection: sa.Connection,
    *,
    owner: str,
    names: Sequence[str],
    limit: int,
    lease_seconds: float,
    now: datetime,
) -> list[SagaSnapshot]:
    """Lease up to `limit` runnable sagas named in `names`, oldest first, to `owner`."""
    if limit <= 0 or not names:
        return []
    candidates = (
        sa.select(sagas.c.id)
        .where(_runnable(now), sagas.c.name.in_(list(names)))
        .order_by(sagas.c.created_at)
        .limit(limit)
    )
    if connection.dialect.name == "postgresql":
        candidates = candidates.with_for_update(skip_locked=True)
    statement = (
        sa.update(sagas)
        .where(sagas.c.id.in_(candidates.scalar_subquery()), _runnable(now))
        .values(_lease_to(owner, lease_seconds, now))
        .returning(*sagas.c)
    )
    return [snapshot_from_row(row) for row in connection.execute(statement)]


def renew_leases(
    connection: sa.Connection,
    *,
    owner: str,
    leases: dict[str, int],
    lease_seconds: float,
    now: datetime,
) -> set[str]:
    """Extend `owner`'s leases (saga id -> token); returns the ids still held."""
    if not leases:
        return set()
    rows = connection.execute(
        sa.update(sagas)
        .where(sagas.c.id.in_(sorted(leases)), sagas.c.lease_owner == owner)
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
        .returning(sagas.c.id, sagas.c.lease_token)
    )
    return {str(row.id) for row in rows if leases.get(str(row.id)) == row.lease_token}


def release_leases(
    connection: sa.Connection,
    *,
    owner: str,
    leases: dict[str, int],
    not_before: datetime | None = None,
) -> None:
    """Give leases back (graceful shutdown, a run that failed unexpectedly), so another
    worker can claim the sagas without waiting for expiry - at once, or from `not_before`
    on (a backoff). Fenced by token."""
    for saga_id, token in sorted(leases.items()):
        connection.execute(
            sa.update(sagas)
            .where(
                sagas.c.id == saga_id,
                sagas.c.lease_owner == owner,
                sagas.c.lease_token == token,
            )
            .values(lease_owner=None, lease_expires_at=not_before)
        )


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
) -> SagaSnapshot | None:
    """Lease the one saga `saga_id` to `owner`, as `claim_sagas` would, and return it.

    For a process that just recorded a saga and wants to run it itself (a web adapter's
    background run): the claim succeeds only while the saga is runnable and nobody holds
    a live lease on it, so it never runs twice at once, and it bumps `lease_token`,
    fencing out any earlier holder. Returns None - changing nothing - when the saga does
    not exist (not committed yet, or rolled back), is finished, or is leased to another
    owner.
    """
    statement = (
        sa.update(sagas)
        .where(sagas.c.id == saga_id, _runnable(now))
        .values(_lease_to(owner, lease_seconds, now))
        .returning(*sagas.c)
    )
    row = connection.execute(statement).one_or_none()
    return None if row is None else snapshot_from_row(row)
