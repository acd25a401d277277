"""Writing a batch of transitions with a constant number of statements.

A batch (transitions of any number of sagas, in the order they happened) is folded in
memory with `sagaz.state.apply_transition` into one `SagaChange` per saga (the state
machine applied to a saga whose stored state is not read), then written with:

1. one read of the sagas' lease columns (`FOR SHARE` on PostgreSQL, so no claim can move a
   lease until the batch commits; on SQLite the transaction already holds the write lock);
2. one INSERT for sagas the journal has never seen (an in-process run without a worker);
3. one UPDATE for the sagas with a saga-level transition;
4. one INSERT ... ON CONFLICT DO UPDATE for step rows.

No step row is read: the upsert merges each folded step into the stored row in SQL
(attempts only grow, the first start time is kept, a result, error or finish time is kept
unless replaced, a completion in the batch replaces the error), so the store ends where
applying the transitions one at a time would (tests/store/test_state_machine_agreement.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

from sagaz.state import Fence, SagaChange, Transition, TransitionKind, apply_transition
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.statements import insert_ignoring_conflicts
from sagaz.types import SagaStatus, StepOutcome


def _same(value: datetime | None) -> Any:
    return value


def epoch_microseconds(value: datetime | None) -> int | None:
    """`value` as whole microseconds since 1970-01-01 UTC (a naive datetime is taken as
    UTC, as every timestamp sagaz writes is): what the PostgreSQL statements send for a
    timestamp, turned back into one exactly by `_pg_timestamp` (one subtraction here, where
    ISO 8601 text costs an `isoformat()` call per value)."""
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return (value - _EPOCH) // _MICROSECOND


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def saga_params(
    change: SagaChange, stamp: Callable[[datetime | None], Any] = _same
) -> dict[str, Any]:
    """The saga UPDATE's parameters for a change that holds a saga-level transition
    (timestamps through `stamp`)."""
    return {
        "b_id": change.saga_id,
        "b_status": change.status._value_ if change.status else None,  # not the slow .value
        "b_context": change.context,
        "b_error": change.error,
        "b_correlation_id": change.correlation_id,
        "b_release": change.release,
        "b_updated_at": stamp(change.updated_at),
    }


def step_row(
    saga_id: str,
    step: StepOutcome,
    updated_at: datetime,
    stamp: Callable[[datetime | None], Any] = _same,
) -> dict[str, Any]:
    """The step upsert's row for a step folded from a blank record (see `SagaChange`),
    timestamps through `stamp`."""
    return {
        "saga_id": saga_id,
        "name": step.name,
        "status": step.status._value_,  # .value is a property: slow
        "result": step.result,
        "attempts": step.attempts,
        "error": step.error,
        "started_at": stamp(step.started_at),
        "finished_at": stamp(step.finished_at),
        "updated_at": stamp(updated_at),
    }


#: A saga's lease as read: its owner and token.
Lease = tuple[str | None, int]


def may_write(lease: Lease | None, fence: Fence | None) -> bool:
    """The fencing rule: a write carries the saga's current lease, or there is none."""
    if fence is None:
        return lease is None or lease[0] is None
    return lease is not None and lease[0] == fence.owner and lease[1] == fence.token


def write_transitions(connection: sa.Connection, transitions: Sequence[Transition]) -> set[int]:
    """Persist a batch in the caller's transaction; returns the indexes refused by fencing.

    Nothing of a refused saga is written; everything else is.
    """
    leases = read_leases(connection, {t.saga_id for t in transitions})
    refused: set[int] = set()
    refused_sagas: set[str] = set()
    new_sagas: dict[str, datetime] = {}
    changes: dict[str, SagaChange] = {}
    step_updated_at: dict[tuple[str, str], datetime] = {}
    for index, transition in enumerate(transitions):
        saga_id = transition.saga_id
        lease = leases.get(saga_id)
        if saga_id in refused_sagas or not may_write(lease, transition.fence):
            refused.add(index)
            refused_sagas.add(saga_id)
            continue
        if lease is None and saga_id not in new_sagas:
            if transition.kind is not TransitionKind.SAGA_STARTED:
                raise LookupError(
                    f"saga {saga_id} is not in the store; its first transition must be "
                    f"saga_started, got {transition.kind.value}"
                )
            new_sagas[saga_id] = transition.at
        change = changes.get(saga_id)
        if change is None:
            change = changes[saga_id] = SagaChange(saga_id, transition.saga_name)
        apply_transition(change, transition)
        if transition.step is not None:
            step_updated_at[saga_id, transition.step] = transition.at
    dialect = connection.dialect.name
    if new_sagas:
        connection.execute(
            insert_ignoring_conflicts(sagas, dialect),
            [
                _new_saga_row(saga_id, changes[saga_id].saga_name, new_sagas[saga_id])
                for saga_id in sorted(new_sagas)
            ],
        )
    # PostgreSQL takes the rows as one JSON document, timestamps as epoch microseconds.
    stamp = epoch_microseconds if dialect == "postgresql" else _same
    saga_rows = [
        saga_params(changes[saga_id], stamp)
        for saga_id in sorted(changes)
        if changes[saga_id].updated_at is not None  # it holds a saga-level transition
    ]
    step_rows = [
        step_row(saga_id, changes[saga_id].steps[name], updated_at, stamp)
        for (saga_id, name), updated_at in sorted(step_updated_at.items())
    ]
    if dialect == "postgresql":
        # One statement per table whatever the batch size: one JSON document in,
        # json_to_recordset() inside.
        if saga_rows and step_rows:  # both in one statement: one round trip fewer
            parameters = {"saga_rows": json_rows(saga_rows), "step_rows": json_rows(step_rows)}
            connection.execute(PG_SAGA_UPDATE_AND_STEP_UPSERT, parameters)
        elif saga_rows:
            connection.execute(PG_SAGA_UPDATE, {"saga_rows": json_rows(saga_rows)})
        elif step_rows:
            connection.execute(PG_STEP_UPSERT, {"step_rows": json_rows(step_rows)})
        return refused
    if saga_rows:
        connection.execute(SAGA_UPDATE, saga_rows)
    if step_rows:
        connection.execute(step_upsert(dialect), step_rows)
    return refused


def json_rows(rows: Sequence[Any]) -> str:
    """`rows` as one JSON document (timestamps already `epoch_microseconds`).

    PostgreSQL statements take a whole batch as this one parameter and unpack it with
    `json_to_recordset`: encoding it is one C-level `json.dumps`, where per-column arrays
    cost psycopg a Python-level escape of every element (twice the CPU per batch).
    The contexts and results inside are unpacked as ``json`` (never ``jsonb``), which
    keeps their text as `json.dumps` wrote it: numbers stay exact (see `JSONText`).
    """
    return _ROWS_ENCODER.encode(rows)


_ROWS_ENCODER = json.JSONEncoder(separators=(",", ":"))


def _pg_timestamp(column: str) -> str:
    """SQL turning `column`, epoch microseconds (`epoch_microseconds`), back into the
    timestamp, exactly (whole seconds and microseconds apart: each part is exact in the
    double precision that multiplying an interval takes); NULL stays NULL."""
    return (
        f"(TIMESTAMPTZ 'epoch' + ({column} / 1000000) * INTERVAL '1 second'"
        f" + ({column} % 1000000) * INTERVAL '1 microsecond')"
    )


_PG_SAGA_UPDATE = f"""
    UPDATE {sagas.name} AS s SET
        status = COALESCE(u.b_status, s.status),
        context = COALESCE(u.b_context, s.context),
        error = COALESCE(u.b_error, s.error),
        correlation_id = COALESCE(u.b_correlation_id, s.correlation_id),
        lease_owner = CASE WHEN u.b_release THEN NULL ELSE s.lease_owner END,
        lease_expires_at = CASE WHEN u.b_release THEN NULL ELSE s.lease_expires_at END,
        updated_at = {_pg_timestamp("u.b_updated_at")}
    FROM json_to_recordset(CAST(:saga_rows AS json)) AS u(
        b_id uuid, b_status varchar, b_context json, b_error text,
        b_correlation_id varchar, b_release boolean, b_updated_at bigint
    )
    WHERE s.id = u.b_id
"""

_PG_STEP_UPSERT = f"""
    INSERT INTO {saga_steps.name} AS t
        (saga_id, name, status, result, attempts, error, started_at, finished_at, updated_at)
    SELECT u.saga_id, u.name, u.status, u.result, u.attempts, u.error,
           {_pg_timestamp("u.started_at")}, {_pg_timestamp("u.finished_at")},
           {_pg_timestamp("u.updated_at")}
    FROM json_to_recordset(CAST(:step_rows AS json)) AS u(
        saga_id uuid, name varchar, status varchar, result json, attempts integer,
        error text, started_at bigint, finished_at bigint, updated_at bigint
    )
    ON CONFLICT (saga_id, name) DO UPDATE SET
        status = excluded.status,
        attempts = GREATEST(t.attempts, excluded.attempts),
        result = COALESCE(excluded.result, t.result),
        error = CASE WHEN excluded.result IS NOT NULL THEN excluded.error
                     ELSE COALESCE(excluded.error, t.error) END,
        started_at = COALESCE(t.started_at, excluded.started_at),
        finished_at = COALESCE(excluded.finished_at, t.finished_at),
        updated_at = excluded.updated_at
"""

PG_SAGA_UPDATE = sa.text(_PG_SAGA_UPDATE)
"""PostgreSQL: every saga-level change of a batch in one UPDATE (same merge as SAGA_UPDATE)."""

PG_STEP_UPSERT = sa.text(_PG_STEP_UPSERT)
"""PostgreSQL: every step row of a batch in one upsert (same merge as `step_upsert`)."""

PG_SAGA_UPDATE_AND_STEP_UPSERT = sa.text(
    f"WITH saga_update AS ({_PG_SAGA_UPDATE} RETURNING 1) {_PG_STEP_UPSERT}"
)
"""PostgreSQL: both, as one statement (a data-modifying WITH always runs to completion;
the two touch different tables)."""


def read_leases(connection: sa.Connection, saga_ids: set[str]) -> dict[str, Lease]:
    if not saga_ids:
        return {}
    if connection.dialect.name == "postgresql":
        # One JSON parameter: the same SQL text for every batch size (an expanded IN list
        # would be new SQL to parse each time), cheap to encode; FOR SHARE keeps every
        # lease where it is until the batch commits.
        rows = connection.execute(PG_READ_LEASES, {"ids": json_rows(sorted(saga_ids))})
        return {saga_id: (owner, token) for saga_id, owner, token in rows}
    query = sa.select(sagas.c.id, sagas.c.lease_owner, sagas.c.lease_token)
    rows = connection.execute(query.where(sagas.c.id.in_(sorted(saga_ids))))
    return {str(saga_id): (owner, token) for saga_id, owner, token in rows}


PG_READ_LEASES = sa.text(
    f"""
    SELECT CAST(id AS text), lease_owner, lease_token FROM {sagas.name}
    WHERE id = ANY(ARRAY(SELECT CAST(json_array_elements_text(CAST(:ids AS json)) AS uuid)))
    FOR SHARE
    """
)


def _new_saga_row(saga_id: str, saga_name: str, created_at: datetime) -> dict[str, Any]:
    return {
        "id": saga_id,
        "name": saga_name,
        "status": SagaStatus.PENDING.value,
        "context": {},
        "created_at": created_at,
        "updated_at": created_at,
    }


SAGA_UPDATE = (
    sa.update(sagas)
    .where(sagas.c.id == sa.bindparam("b_id"))
    .values(
        status=sa.func.coalesce(sa.bindparam("b_status", type_=sa.String), sagas.c.status),
        context=sa.func.coalesce(
            sa.bindparam("b_context", type_=sagas.c.context.type), sagas.c.context
        ),
        error=sa.func.coalesce(sa.bindparam("b_error", type_=sa.Text), sagas.c.error),
        correlation_id=sa.func.coalesce(
            sa.bindparam("b_correlation_id", type_=sa.String), sagas.c.correlation_id
        ),
        lease_owner=sa.case(
            (sa.bindparam("b_release", type_=sa.Boolean), sa.null()), else_=sagas.c.lease_owner
        ),
        lease_expires_at=sa.case(
            (sa.bindparam("b_release", type_=sa.Boolean), sa.null()),
            else_=sagas.c.lease_expires_at,
        ),
        updated_at=sa.bindparam("b_updated_at", type_=sagas.c.updated_at.type),
    )
)
"""Saga-level changes; NULL parameters keep the stored value."""


def step_upsert(dialect: str) -> Insert:
    """Insert step rows, or merge them into the stored ones (see the module docstring)."""
    if dialect == "postgresql":
        insert: Any = postgresql.insert(saga_steps)
        greatest: Any = sa.func.greatest
    elif dialect == "sqlite":
        insert = sqlite.insert(saga_steps)
        greatest = sa.func.max  # SQLite's two-argument max() is GREATEST
    else:
        raise NotImplementedError(f"sagaz supports PostgreSQL and SQLite, not {dialect}")
    new, old = insert.excluded, saga_steps.c
    merged: Insert = insert.on_conflict_do_update(
        index_elements=[old.saga_id, old.name],
        set_={
            "status": new.status,
            "attempts": greatest(old.attempts, new.attempts),
            "result": sa.func.coalesce(new.result, old.result),
            "error": sa.case(
                (new.result.is_not(None), new.error),
                else_=sa.func.coalesce(new.error, old.error),
            ),
            "started_at": sa.func.coalesce(old.started_at, new.started_at),
            "finished_at": sa.func.coalesce(new.finished_at, old.finished_at),
            "updated_at": new.updated_at,
        },
    )
    return merged
