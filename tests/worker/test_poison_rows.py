"""Rows written by hand (or by an older version, or a bug) that sagaz cannot read fail
their saga alone - FAILED, with an error naming the column - and every other saga runs:
a context that is not a JSON object (an array, a string, null; malformed text on
SQLite), a step result that is not a JSON object or not JSON. A saga whose name no worker
registered never blocks a claim either: it stays runnable and says what is missing.

Sagas the worker fails without running them - unreadable rows, a compensation given up -
are reported to the transition listeners like any other end, so the metric
`sagaz_sagas_finished_total{status="failed"}` counts them.

The rows are inserted with raw SQL whose JSON is text, so it works whether the column is
JSONB, JSON or (SQLite) TEXT."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz import Saga, action, compensate
from sagaz.journal import utcnow
from sagaz.metrics import metrics_for
from sagaz.store.schema import sagas
from sagaz.store.stores import SagaStore
from sagaz.worker.claims import UNKNOWN_SAGA_ERROR
from tests.conftest import DatabaseUrls
from tests.worker.test_saga_worker import RunningWorker, engines, make_worker, start, wait_for

__all__ = ["engines"]  # the fixture, shared with test_saga_worker

UNDONE: list[str] = []


class PlainSaga(Saga):
    saga_name = "poison-plain"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        return {"a": True}

    @compensate("a")
    async def undo_a(self, ctx: Any) -> None:
        UNDONE.append("a")

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> None:
        return None


# Ids and times as sagaz binds them (SQLite keeps a UUID as 32 hex digits); the JSON is
# plain text.
TYPED = (
    sa.bindparam("id", type_=sagas.c.id.type),
    sa.bindparam("saga_id", type_=sagas.c.id.type),
    sa.bindparam("now", type_=sagas.c.created_at.type),
)


def insert_saga(
    engine: sa.Engine, *, context: str, name: str = "poison-plain", status: str = "pending"
) -> str:
    saga_id = str(uuid.uuid4())
    now = utcnow() - timedelta(minutes=1)  # older than the good sagas: claimed first
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO sagaz_sagas (id, name, status, context, lease_token, attempts, "
                "stalled_claims, created_at, updated_at) "
                "VALUES (:id, :name, :status, :context, 0, 0, 0, :now, :now)"
            ).bindparams(TYPED[0], TYPED[2]),
            {"id": saga_id, "name": name, "status": status, "context": context, "now": now},
        )
    return saga_id


def insert_step(engine: sa.Engine, saga_id: str, name: str, result: str) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.text(
                "INSERT INTO sagaz_saga_steps (saga_id, name, status, result, attempts, "
                "updated_at) VALUES (:saga_id, :name, 'completed', :result, 1, :now)"
            ).bindparams(TYPED[1], TYPED[2]),
            {"saga_id": saga_id, "name": name, "result": result, "now": utcnow()},
        )


def rows(engine: sa.Engine, ids: list[str]) -> dict[str, tuple[str, str | None]]:
    with engine.connect() as connection:
        found = connection.execute(
            sa.select(sagas.c.id, sagas.c.status, sagas.c.error).where(sagas.c.id.in_(ids))
        )
        return {str(row.id): (row.status, row.error) for row in found}


async def test_unreadable_rows_fail_alone_and_every_other_saga_runs(
    db: DatabaseUrls, engines: tuple[AsyncEngine, sa.Engine]
) -> None:
    async_engine, sync_engine = engines
    bad_contexts = ["[1, 2]", '"x"', "null", "42"]
    if db.dialect == "sqlite":
        bad_contexts.append("{not json")
    bad = {insert_saga(sync_engine, context=text): text for text in bad_contexts}
    bad_results = ["[1]", '"done"'] + (["{broken"] if db.dialect == "sqlite" else [])
    resumed_bad = {}
    for text in bad_results:  # a running saga whose completed step's result is unreadable
        saga_id = insert_saga(sync_engine, context='{"n": 1}', status="running")
        insert_step(sync_engine, saga_id, "a", text)
        resumed_bad[saga_id] = text
    unknown = insert_saga(sync_engine, context='{"n": 1}', name="poison-nobody-registered")
    good = await start(async_engine, PlainSaga, [{"n": n} for n in range(5)])
    registry = CollectorRegistry()
    worker = make_worker(
        engines,
        unknown_saga_grace_seconds=0.0,
        concurrency=3,  # several claims, each meeting bad rows first
        listeners=(metrics_for(registry).observe_transition,),
    )
    running = RunningWorker(worker)
    everything = [*bad, *resumed_bad, *good]
    try:
        await wait_for(
            lambda: (
                {status for status, _ in rows(sync_engine, everything).values()}
                <= {"completed", "failed"}
            )
        )
        await wait_for(lambda: (rows(sync_engine, [unknown])[unknown][1] or "") != "")
    finally:
        await running.stop()
    found = rows(sync_engine, everything)
    assert {found[saga_id][0] for saga_id in good} == {"completed"}
    for saga_id, text in bad.items():
        status, error = found[saga_id]
        assert status == "failed", text
        assert f"saga {saga_id}: column sagaz_sagas.context is not" in (error or ""), text
    for saga_id, text in resumed_bad.items():
        status, error = found[saga_id]
        assert status == "failed", text
        assert "column sagaz_saga_steps.result of step 'a' is not" in (error or ""), text
    assert UNDONE == []  # nothing of a corrupt saga is run, not even a compensation
    status, error = rows(sync_engine, [unknown])[unknown]
    assert status == "pending"
    assert (error or "").startswith(UNKNOWN_SAGA_ERROR)
    # `sagaz list` still lists every saga, the unreadable ones with an empty context.
    listed = {snapshot.saga_id: snapshot for snapshot in SagaStore(sync_engine).list(limit=100)}
    assert set(everything) | {unknown} <= set(listed)
    assert all(listed[saga_id].context == {} for saga_id in bad)
    # Each saga ended is counted once, with its outcome, whether it ran or not.
    assert finished(registry, "completed") == len(good)
    assert finished(registry, "failed") == len(bad) + len(resumed_bad)


def finished(registry: CollectorRegistry, status: str, saga: str = "poison-plain") -> float:
    """`sagaz_sagas_finished_total` of `saga` with `status`."""
    labels = {"saga": saga, "status": status}
    return registry.get_sample_value("sagaz_sagas_finished_total", labels) or 0.0


async def test_a_compensation_given_up_is_counted_as_failed(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    """A saga whose compensation kept crashing its workers (claims in a row without
    progress, while COMPENSATING) is FAILED without running anything - and counted."""
    _async_engine, sync_engine = engines
    saga_id = insert_saga(sync_engine, context='{"n": 1}', status="compensating")
    insert_step(sync_engine, saga_id, "a", '{"a": true}')
    with sync_engine.begin() as connection:  # two claims in a row made no progress
        connection.execute(
            sa.update(sagas)
            .where(sagas.c.id == saga_id)
            .values(stalled_claims=2, claimed_at=utcnow() - timedelta(hours=1))
        )
    registry = CollectorRegistry()
    worker = make_worker(
        engines, max_attempts=3, listeners=(metrics_for(registry).observe_transition,)
    )
    running = RunningWorker(worker)
    try:
        await wait_for(lambda: rows(sync_engine, [saga_id])[saga_id][0] == "failed")
    finally:
        await running.stop()
    _status, error = rows(sync_engine, [saga_id])[saga_id]
    assert "while compensating; not compensated: a" in (error or "")
    assert UNDONE == []
    assert finished(registry, "failed") == 1
    assert finished(registry, "compensated") == 0
