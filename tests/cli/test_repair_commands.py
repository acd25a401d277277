"""`sagaz retry` and `sagaz cancel` against a real PostgreSQL, with a worker running
in-process: a retried FAILED saga completes (or finishes its compensation) once its cause
is fixed; a cancelled running saga stops at its next step boundary and is compensated,
no step running twice; destructive commands refuse without confirmation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.cli import main
from sagaz.store.schema import saga_steps, sagas
from sagaz.worker.cancel import CANCELLED_ERROR
from tests.cli.sagas_for_operations import (
    BROKEN,
    GATE,
    RUNS,
    BrittleUndoSaga,
    GatedSaga,
    TwoStepSaga,
)
from tests.conftest import DatabaseUrls
from tests.worker.test_poison_rows import insert_saga, insert_step
from tests.worker.test_saga_worker import RunningWorker, make_worker, start, wait_for

Engines = tuple[AsyncEngine, sa.Engine]


@pytest.fixture
async def engines(pg: DatabaseUrls) -> AsyncIterator[Engines]:
    async_engine, sync_engine = pg.async_engine(), pg.sync_engine()
    RUNS.clear()
    BROKEN["undo"] = True
    yield async_engine, sync_engine
    await async_engine.dispose()
    sync_engine.dispose()


async def sagaz(*args: str, input: str | None = None) -> Result:
    """Run the `sagaz` command in a thread (the worker keeps running on the loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, list(args), input=input)


def saga_row(engine: sa.Engine, saga_id: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()


def step_statuses(engine: sa.Engine, saga_id: str) -> dict[str, str]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(saga_steps.c.name, saga_steps.c.status).where(saga_steps.c.saga_id == saga_id)
        )
        return {row.name: row.status for row in rows}


async def run_worker_until(engines: Engines, check: Callable[[], bool], **options: Any) -> None:
    running = RunningWorker(make_worker(engines, **options))
    try:
        await wait_for(check)
    finally:
        await running.stop()


def has_status(engine: sa.Engine, saga_id: str, status: str) -> Callable[[], bool]:
    return lambda: saga_row(engine, saga_id).status == status


async def test_retry_resumes_a_failed_saga_to_completed_once_its_cause_is_fixed(
    pg: DatabaseUrls, engines: Engines
) -> None:
    _, sync_engine = engines
    # A running saga whose completed step's result cannot be read: the worker fails it.
    saga_id = insert_saga(sync_engine, context='{"n": 1}', name="ops-two-step", status="running")
    insert_step(sync_engine, saga_id, "first", "[1]")
    await run_worker_until(engines, has_status(sync_engine, saga_id, "failed"))
    assert "column sagaz_saga_steps.result of step 'first'" in saga_row(sync_engine, saga_id).error

    with sync_engine.begin() as connection:  # the operator repairs the row
        connection.execute(
            sa.update(saga_steps)
            .where(saga_steps.c.saga_id == saga_id, saga_steps.c.name == "first")
            .values(result={"first": 1})
        )
    retried = await sagaz("retry", "--url", pg.url, saga_id, "--yes")
    assert retried.exit_code == 0, retried.output
    assert f"saga {saga_id} is RUNNING again" in retried.output
    await run_worker_until(engines, has_status(sync_engine, saga_id, "completed"))

    row = saga_row(sync_engine, saga_id)
    assert row.error is None
    assert row.context == {"n": 1, "first": 1, "second": 2}
    assert RUNS == ["second"]  # resumed after its completed step, which is not run again
    again = await sagaz("retry", "--url", pg.url, saga_id, "--yes")
    assert again.exit_code == 1
    assert "is completed; only a FAILED saga can be retried" in again.output


async def test_retry_re_runs_a_failed_compensation(pg: DatabaseUrls, engines: Engines) -> None:
    async_engine, sync_engine = engines
    (saga_id,) = await start(async_engine, BrittleUndoSaga, [{}])
    await run_worker_until(engines, has_status(sync_engine, saga_id, "failed"))
    assert step_statuses(sync_engine, saga_id) == {
        "reserve": "compensation_failed",
        "charge": "failed",
    }
    refused = await sagaz("retry", "--url", pg.url, saga_id, "--resume", "--yes")
    assert refused.exit_code == 1
    assert "its compensation has begun" in refused.output

    BROKEN["undo"] = False  # the stock service is back
    retried = await sagaz("retry", "--url", pg.url, saga_id, "--yes")
    assert retried.exit_code == 0, retried.output
    assert "is COMPENSATING" in retried.output
    await run_worker_until(engines, has_status(sync_engine, saga_id, "compensated"))
    assert RUNS == ["reserve", "release"]
    assert step_statuses(sync_engine, saga_id)["reserve"] == "compensated"


async def test_cancel_stops_a_running_saga_at_its_next_step_boundary_and_compensates_it(
    pg: DatabaseUrls, engines: Engines, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sagaz.worker")
    async_engine, sync_engine = engines
    GATE["entered"], GATE["open"] = asyncio.Event(), asyncio.Event()
    (saga_id,) = await start(async_engine, GatedSaga, [{}])
    running = RunningWorker(make_worker(engines, lease_seconds=1.5))
    try:
        await asyncio.wait_for(GATE["entered"].wait(), 20)  # step "b" is running
        cancelled = await sagaz("cancel", "--url", pg.url, saga_id, "--yes")
        assert cancelled.exit_code == 0, cancelled.output
        assert "cancel of saga" in cancelled.output
        # the worker sees the request at its next lease renewal...
        await wait_for(lambda: f"saga {saga_id}: cancel requested" in caplog.text)
        assert saga_row(sync_engine, saga_id).status == "running"
        GATE["open"].set()  # ...and "b" finishes: the boundary where the run stops
        await wait_for(has_status(sync_engine, saga_id, "compensated"))
    finally:
        await running.stop()
    assert RUNS == ["a", "b", "undo b", "undo a"]  # "c" never started; nothing ran twice
    assert step_statuses(sync_engine, saga_id) == {"a": "compensated", "b": "compensated"}
    row = saga_row(sync_engine, saga_id)
    assert row.error == CANCELLED_ERROR
    assert row.cancel_requested_at is not None


async def test_cancel_of_a_pending_saga_compensates_it_without_running_a_step(
    pg: DatabaseUrls, engines: Engines
) -> None:
    async_engine, sync_engine = engines
    (saga_id,) = await start(async_engine, TwoStepSaga, [{}])
    cancelled = await sagaz("cancel", "--url", pg.url, saga_id, "--yes")
    assert cancelled.exit_code == 0, cancelled.output
    await run_worker_until(engines, has_status(sync_engine, saga_id, "compensated"))
    assert RUNS == []
    assert saga_row(sync_engine, saga_id).error == CANCELLED_ERROR
    refused = await sagaz("cancel", "--url", pg.url, saga_id, "--yes")
    assert refused.exit_code == 1
    assert "only a PENDING or RUNNING saga can be cancelled" in refused.output


async def test_retry_and_cancel_change_nothing_unless_confirmed(
    pg: DatabaseUrls, engines: Engines
) -> None:
    async_engine, sync_engine = engines
    pending, failed = await start(async_engine, TwoStepSaga, [{}, {}])
    with sync_engine.begin() as connection:
        connection.execute(sa.update(sagas).where(sagas.c.id == failed).values(status="failed"))
    for args, saga_id in ((["cancel"], pending), (["retry"], failed)):
        for answer in (None, "n\n"):  # no terminal to answer on, or a no
            result = await sagaz(*args, "--url", pg.url, saga_id, input=answer)
            assert result.exit_code == 1, result.output
            assert "Aborted" in result.output
    assert saga_row(sync_engine, pending).cancel_requested_at is None
    assert saga_row(sync_engine, failed).status == "failed"
    confirmed = await sagaz("cancel", "--url", pg.url, pending, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert saga_row(sync_engine, pending).cancel_requested_at is not None
