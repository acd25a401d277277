"""What the stores do, written once against a sync `Connection`.

The sync store calls these inside `engine.begin()`; the async store runs the very same
functions through `AsyncConnection.run_sync`, so there is one implementation of every
read and write (DESIGN rule 5). State changes go through `sagaz.journal.apply_transition`,
the same pure state machine the in-memory journal uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sagaz.journal import (
    Fence,
    SagaSnapshot,
    StepSnapshot,
    Transition,
    TransitionKind,
    apply_transition,
)
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.statements import upsert
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


_SAGA_UPDATED_COLUMNS = (
    "status",
    "context",
    "error",
    "correlation_id",
    "lease_owner",
    "lease_expires_at",
    "updated_at",
)
_STEP_UPDATED_COLUMNS = (
    "status",
    "result",
    "attempts",
    "error",
    "started_at",
    "finished_at",
    "updated_at",
)


def may_write(snapshot: SagaSnapshot | None, fence: Fence | None) -> bool:
    """The fencing rule: a write carries the saga's current lease, or there is none."""
    if fence is None:
        return snapshot is None or snapshot.lease_owner is None
    return (
        snapshot is not None
        and snapshot.lease_owner == fence.owner
        and snapshot.lease_token == fence.token
    )


def write_transitions(connection: sa.Connection, transitions: Sequence[Transition]) -> set[int]:
    """Persist a batch of transitions (of any number of sagas) in the caller's transaction.

    Returns the indexes of the transitions refused by fencing; nothing of a refused saga
    is written, everything else is. A constant number of statements per batch: one read
    of the sagas and their steps (FOR SHARE on PostgreSQL, so no claim can move a lease
    before this transaction ends), one saga upsert (saga-level transitions only) and one
    step upsert, each executed for all rows at once, rows sorted by id.
    """
    snapshots = load_sagas(connection, [t.saga_id for t in transitions], lock=True)
    refused: set[int] = set()
    refused_sagas: set[str] = set()
    touched_sagas: dict[str, SagaSnapshot] = {}
    touched_steps: dict[tuple[str, str], StepSnapshot] = {}
    step_times: dict[tuple[str, str], datetime] = {}
    for index, transition in enumerate(transitions):
        snapshot = snapshots.get(transition.saga_id)
        if transition.saga_id in refused_sagas or not may_write(snapshot, transition.fence):
            refused.add(index)
            refused_sagas.add(transition.saga_id)
            continue
        if snapshot is None:
            if transition.kind is not TransitionKind.SAGA_STARTED:
                raise LookupError(
                    f"saga {transition.saga_id} is not in the store; its first transition "
                    f"must be saga_started, got {transition.kind.value}"
                )
            snapshot = snapshots[transition.saga_id] = SagaSnapshot(
                saga_id=transition.saga_id,
                saga_name=transition.saga_name,
                status=SagaStatus.PENDING,
                context={},
                created_at=transition.at,
            )
        apply_transition(snapshot, transition)
        if transition.step is None:
            touched_sagas[snapshot.saga_id] = snapshot
        else:
            # Step transitions leave the saga row alone: transactions recording steps of
            # one saga in parallel then share its row lock instead of deadlocking on it.
            touched_steps[(snapshot.saga_id, transition.step)] = snapshot.steps[transition.step]
            step_times[(snapshot.saga_id, transition.step)] = transition.at
    dialect = connection.dialect.name
    if touched_sagas:
        connection.execute(
            upsert(sagas, dialect, ["id"], _SAGA_UPDATED_COLUMNS),
            [_saga_row(touched_sagas[saga_id]) for saga_id in sorted(touched_sagas)],
        )
    if touched_steps:
        connection.execute(
            upsert(saga_steps, dialect, ["saga_id", "name"], _STEP_UPDATED_COLUMNS),
            [
                _step_row(saga_id, step, step_times[(saga_id, name)])
                for (saga_id, name), step in sorted(touched_steps.items())
            ],
        )
    return refused


def _saga_row(snapshot: SagaSnapshot) -> dict[str, Any]:
    return {
        "id": snapshot.saga_id,
        "name": snapshot.saga_name,
        "status": snapshot.status.value,
        "context": snapshot.context,
        "correlation_id": snapshot.correlation_id,
        "lease_owner": snapshot.lease_owner,
        "lease_expires_at": snapshot.lease_expires_at,
        "error": snapshot.error,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
    }


def _step_row(saga_id: str, step: StepSnapshot, at: datetime) -> dict[str, Any]:
    return {
        "saga_id": saga_id,
        "name": step.name,
        "status": step.status.value,
        "result": step.result,
        "attempts": step.attempts,
        "error": step.error,
        "started_at": step.started_at,
        "finished_at": step.finished_at,
        "updated_at": at,
    }
