"""What the stores do, written once against a sync `Connection`.

The sync store calls these inside `engine.begin()`; the async store runs the very same
functions through `AsyncConnection.run_sync`, so there is one implementation of every
read and write (DESIGN rule 5). Writes live in `sagaz.store.transition_writes`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sagaz.errors import CorruptRowError
from sagaz.state import SagaSnapshot
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.transition_writes import write_transitions
from sagaz.types import SagaStatus, StepOutcome, StepStatus


def as_utc(value: datetime | None) -> datetime | None:
    """Timestamps come back naive from SQLite; every timestamp sagaz writes is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def decode_document(value: Any, where: str) -> Any:
    """A JSON column's value as read: raw text (`as_text`) is parsed here, so
    that a malformed document raises CorruptRowError naming `where` instead of breaking
    the whole statement that read it."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError as error:
        raise CorruptRowError(f"{where} is not valid JSON ({error})") from None


def decode_object(value: Any, where: str) -> dict[str, Any]:
    """`decode_document`, which must give a JSON object."""
    document = decode_document(value, where)
    if not isinstance(document, dict):
        kind = "null" if document is None else type(document).__name__
        raise CorruptRowError(f"{where} is not a JSON object (it holds a {kind})")
    return document


def as_text(column: sa.ColumnElement[Any]) -> sa.Label[Any]:
    """`column` read as its stored text (a JSON column: parsed by `decode_document`)."""
    return sa.cast(column, sa.Text).label(column.key or "")


#: The saga columns a claim or load returns, the context as text (`decode_object`).
#: The trace context too: an unreadable one is ignored (`sagaz.tracing`), never fatal.
SAGA_COLUMNS_AS_TEXT = [as_text(c) if c.key in ("context", "trace_context") else c for c in sagas.c]
STEP_COLUMNS_AS_TEXT = [as_text(c) if c.key == "result" else c for c in saga_steps.c]


def snapshot_from_row(row: sa.Row[Any], *, strict: bool = True) -> SagaSnapshot:
    """A saga row as a snapshot. Raises CorruptRowError, naming the saga and column,
    when its context (unless not `strict`: then it is empty) or status cannot be read."""
    saga_id = str(row.id)
    context: Any = row.context
    if context is None:
        context = {}
    elif type(context) is not dict:  # the stored text (`as_text`)
        try:
            context = decode_object(context, f"saga {saga_id}: column {sagas.name}.context")
        except CorruptRowError:
            if strict:
                raise
            context = {}
    status = _SAGA_STATUSES.get(row.status)
    if status is None:
        raise CorruptRowError(
            f"saga {saga_id}: column {sagas.name}.status holds {row.status!r}, not a status"
        )
    return SagaSnapshot(
        saga_id=saga_id,
        saga_name=row.name,
        status=status,
        context=context,
        error=row.error,
        correlation_id=row.correlation_id,
        created_at=as_utc(row.created_at),
        updated_at=as_utc(row.updated_at),
        idempotency_key=row.idempotency_key,
        lease_owner=row.lease_owner,
        lease_expires_at=as_utc(row.lease_expires_at),
        lease_token=row.lease_token,
        attempts=row.attempts,
        stalled_claims=row.stalled_claims,
    )


#: A saga status by its stored text (a lookup, where `SagaStatus(text)` is a slow call).
_SAGA_STATUSES: dict[object, SagaStatus] = {status.value: status for status in SagaStatus}


def pending_saga_row(
    saga_id: str,
    name: str,
    context: dict[str, Any],
    *,
    idempotency_key: str | None,
    correlation_id: str | None,
    now: datetime,
    trace_context: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The row of a new PENDING saga, unleased (checked values in, no I/O). Every row has
    the same keys, so the request's insert keeps one shape (`trace_context` None or not)."""
    return {
        "id": saga_id,
        "name": name,
        "status": SagaStatus.PENDING.value,
        "context": context,
        "idempotency_key": idempotency_key,
        "correlation_id": correlation_id,
        "lease_owner": None,
        "lease_expires_at": None,
        "lease_token": 0,
        "attempts": 0,
        "error": None,
        "created_at": now,
        "updated_at": now,
        "trace_context": None if trace_context is None else dict(trace_context),
    }


def step_from_row(row: sa.Row[Any]) -> StepOutcome:
    """A step row as a snapshot; CorruptRowError when its result or status is unreadable."""
    where = f"saga {row.saga_id}: column {saga_steps.name}.result of step '{row.name}'"
    result = None if row.result is None else decode_object(row.result, where)
    try:
        status = StepStatus(row.status)
    except ValueError:
        raise CorruptRowError(
            f"saga {row.saga_id}: column {saga_steps.name}.status of step '{row.name}' "
            f"holds {row.status!r}, not a step status"
        ) from None
    return StepOutcome(
        name=row.name,
        status=status,
        attempts=row.attempts,
        result=result,
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
    query = sa.select(*SAGA_COLUMNS_AS_TEXT).where(sagas.c.id.in_(sorted(set(saga_ids))))
    if lock and connection.dialect.name == "postgresql":
        query = query.with_for_update(read=True)
    loaded = {str(row.id): snapshot_from_row(row) for row in connection.execute(query)}
    if loaded:
        steps = connection.execute(
            sa.select(*STEP_COLUMNS_AS_TEXT).where(saga_steps.c.saga_id.in_(list(loaded)))
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
    created_before: datetime | None = None,
    created_after: datetime | None = None,
) -> list[SagaSnapshot]:
    """Sagas newest first (without their steps), filtered by status, name and creation
    time (`created_after` <= created_at < `created_before`), paged.

    A row whose context cannot be read is listed with an empty context (a worker that
    met it failed the saga with an error naming the column), so one bad row never hides
    the others."""
    if limit < 1 or offset < 0:
        raise ValueError(f"limit must be >= 1 and offset >= 0, got {limit=}, {offset=}")
    query = (
        sa.select(*SAGA_COLUMNS_AS_TEXT)
        .order_by(sagas.c.created_at.desc(), sagas.c.id)
        .limit(limit)
    )
    if status is not None:
        query = query.where(sagas.c.status == SagaStatus(status).value)
    if name is not None:
        query = query.where(sagas.c.name == name)
    if created_before is not None:
        query = query.where(sagas.c.created_at < created_before)
    if created_after is not None:
        query = query.where(sagas.c.created_at >= created_after)
    rows = connection.execute(query.offset(offset))
    return [snapshot_from_row(row, strict=False) for row in rows]


__all__ = ["list_sagas", "load_saga", "load_sagas", "pending_saga_row", "write_transitions"]
