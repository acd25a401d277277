"""Transactional steps (taking a `session`) time out cleanly: nothing they wrote commits,
for async steps (cancelled) and plain def steps (their thread rolls back). Past the run's
lease deadline they commit nothing either, and they see their run (`current_run()`)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from sagaz import LeaseLostError, Saga, SagaStatus, StepRun, current_run
from sagaz.engine import SagaEngine
from sagaz.run_context import LeaseClock
from sagaz.store.stores import AsyncSagaStore

app = sa.MetaData()
writes = sa.Table("app_tx_writes", app, sa.Column("name", sa.String(20), primary_key=True))


async def slow_async(ctx: Any, session: Any) -> None:
    await session.execute(sa.insert(writes).values(name="async"))
    await asyncio.sleep(5)


def slow_sync(ctx: Any, session: Session) -> None:
    session.execute(sa.insert(writes).values(name="sync"))
    time.sleep(0.6)


def raises_timeout_itself(ctx: Any, session: Session) -> None:
    raise TimeoutError("the payment API timed out")


def count(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(writes)) or 0


async def test_timed_out_transactional_steps_commit_nothing(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    app.create_all(sync_engine)
    store = AsyncSagaStore(async_engine, sync_engine=sync_engine)
    engine = SagaEngine(store)
    for index, step in enumerate((slow_async, slow_sync)):
        saga = Saga(name=f"tx-timeout-{index}").add_step("slow", step, timeout_seconds=0.2)
        result = await engine.run(
            saga.definition, {}, saga_id=f"20000000-0000-4000-8000-00000000000{index}"
        )
        assert result.status is SagaStatus.COMPENSATED
        assert "timed out after 0.2s" in (result.error or "")
    await asyncio.sleep(0.8)  # the sync step's thread has returned and rolled back
    assert await asyncio.to_thread(count, sync_engine) == 0


async def test_a_timeout_raised_by_the_step_is_not_reported_as_a_step_timeout(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    store = AsyncSagaStore(async_engine, sync_engine=sync_engine)
    saga = Saga(name="tx-own-timeout").add_step("pay", raises_timeout_itself, timeout_seconds=5)
    result = await SagaEngine(store).run(
        saga.definition, {}, saga_id="20000000-0000-4000-8000-000000000009"
    )
    assert result.status is SagaStatus.COMPENSATED
    assert "the payment API timed out" in (result.error or "")
    assert "timed out after" not in (result.error or "")


async def test_transactional_steps_past_the_lease_deadline_commit_nothing(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    app.create_all(sync_engine)
    store = AsyncSagaStore(async_engine, sync_engine=sync_engine)
    now = [0.0]
    seen: list[StepRun] = []

    def late_sync(ctx: Any, session: Session) -> None:
        seen.append(current_run())
        session.execute(sa.insert(writes).values(name="sync"))
        now[0] += 60  # paused past the lease inside the step

    async def late_async(ctx: Any, session: Any) -> None:
        seen.append(current_run())
        await session.execute(sa.insert(writes).values(name="async"))
        now[0] += 60

    for index, step in enumerate((late_sync, late_async)):
        lease = LeaseClock(10.0, 1.0, started_at=now[0], clock=lambda: now[0])
        saga = Saga(name=f"tx-late-{index}").add_step("late", step)
        with pytest.raises(LeaseLostError, match="committing step 'late' not started"):
            await SagaEngine(store).run(
                saga.definition, {}, saga_id=f"20000000-0000-4000-8000-00000000001{index}",
                lease=lease,
            )  # fmt: skip
    assert [(run.step, run.attempt, run.lease_held()) for run in seen] == [("late", 1, False)] * 2
    assert await asyncio.to_thread(count, sync_engine) == 0


def reads_a_missing_table(ctx: Any, session: Session) -> None:
    session.execute(sa.text("SELECT * FROM app_no_such_table"))


async def test_a_missing_table_in_the_step_is_a_step_failure_not_an_outage(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    """SQLite reports it as an OperationalError, which was taken for a lost connection
    (DatabaseUnavailableError: the run given back and re-run instead of compensated)."""
    store = AsyncSagaStore(async_engine, sync_engine=sync_engine)
    saga = Saga(name="tx-missing-table").add_step("read", reads_a_missing_table)
    result = await SagaEngine(store).run(
        saga.definition, {}, saga_id="20000000-0000-4000-8000-000000000009"
    )
    assert result.status is SagaStatus.COMPENSATED
    assert "app_no_such_table" in (result.error or "")
