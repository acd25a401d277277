"""What the stores do, written once against a sync `Connection`.

The sync store calls these inside `engine.begin()`; the async store runs the very same
functions through `AsyncConnection.run_sync`, so there is one implementation of every
read and write (DESIGN rule 5). Writes live in `sagaz.store.transition_writes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sagaz.journal import SagaSnapshot, StepSnapshot
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.transition_writes import write_transitions
from sagaz.types import SagaStatus, StepStatus


def as_utc(value: datetime | None) -> datetime | None:
    """Timestamps come back naive from SQLite; every timestamp sagaz writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def snapshot_from_row(row: sa.Row[Any]) -> SagaSnapshot:
    return SagaSnapshot(
        saga_id=str(row.id),
        saga_name=row.name,
        status=SagaStatus(row.status),
        context=dict(row.context or {}),
        error=row.error,
        correlation_id=row.correlation_id,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        idempotency_key=row.idempotency_key,
        lease_owner=row.lease_owner,
        lease_expires_at=as_utc(row.lease_expires_at),
        lease_token=row.lease_token,
        attempts=row.attempts,
    )


def step_from_row(row: sa.Row[Any]) -> StepSnapshot:
    return StepSnapshot(
        name=row.name,
        status=StepStatus(row.status),
        attempts=row.attempts,
        result=row.result,
        error=row.error,
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
    )


def load_sagas(
    connection: sa.Connection, saga_ids: Sequence[str], *, lock: bool = False
) -> dict[str, SagaSnapshot]:
    """The sagas with these ids, with their steps. `lock` takes FOR SHARE on PostgreSQL,
    so no claim can move a lease until this transaction ends."""
    if not saga_ids:
        return {}
    query = sa.select(sagas).where(sagas.c.id.in_(sorted(set(saga_ids))))
    if lock and connection.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    loaded = {str(row.id): snapshot_from_row(row) for row in connection.execute(query)}
    if loaded:
        steps = connection.execute(
            sa.select(saga_steps).where(saga_steps.c.saga_id.in_(list(loaded)))
        )
        for row in steps:
            loaded[str(row.saga_id)].steps[row.name] = step_from_row(row)
    return loaded


def load_saga(connection: sa.Connection, saga_id: str) -> SagaSnapshot | None:
    return load_sagas(connection, [saga_id]).get(saga_id)


def list_sagas(
    connection: sa.Connection,
    *,
    status: SagaStatus | str | None = None,
    name: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> list[SagaSnapshot]:
    """Sagas newest first (without their steps), filtered by status and name, paged."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit=}, {offset=}")
    query = sa.select(sagas).order_by(sagas.c.created_at.desc(), sagas.c.id).limit(limit)
    if status is not None:
        query = query.where(sagas.c.status == SagaStatus(status).value)
    if name is not None:
        query = query.where(sagas.c.name == name)
    return [snapshot_from_row(row) for row in connection.execute(query.offset(offset))]


__all__ = ["list_sagas", "load_saga", "load_sagas", "write_transitions"]
