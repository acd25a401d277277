"""A transactional step whose database connection breaks (a restart, the network) is not
a failed step: the run stops without recording a failure, the claim is refunded, and the
next claim runs the step again - nothing compensated, the effect written once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sagaz import Saga, action, compensate, start_saga
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.stores import AsyncSagaStore
from sagaz.worker import SagaWorker
from tests.conftest import DatabaseUrls

effects = sa.Table(
    "connection_loss_effects",
    sa.MetaData(),
    sa.Column("n", sa.Integer, primary_key=True),
)
compensated: list[int] = []
terminated: set[int] = set()


class CutInStepSaga(Saga):
    """Its transactional step kills its own backend the first time it runs for a saga."""

    saga_name = "connection-loss-in-step"

    @action("reserve")
    async def reserve(self, ctx: Any) -> None:
        return None

    @compensate("reserve")
    async def release(self, ctx: Any) -> None:
        compensated.append(ctx["n"])

    @action("charge", depends_on=["reserve"])
    async def charge(self, ctx: Any, session: AsyncSession) -> None:
        await session.execute(sa.insert(effects).values(n=ctx["n"]))
        if ctx["n"] not in terminated:
            terminated.add(ctx["n"])
            # what every connection sees when PostgreSQL restarts
            await session.execute(sa.text("SELECT pg_terminate_backend(pg_backend_pid())"))


@pytest.fixture
async def engines(pg: DatabaseUrls) -> AsyncIterator[tuple[AsyncEngine, sa.Engine]]:
    async_engine, sync_engine = pg.async_engine(), pg.sync_engine()
    effects.metadata.create_all(sync_engine)
    yield async_engine, sync_engine
    await async_engine.dispose()
    sync_engine.dispose()


async def test_a_connection_lost_inside_a_transactional_step_is_not_a_step_failure(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    compensated.clear()
    terminated.clear()
    async with AsyncSession(async_engine) as session:
        saga_id = start_saga(session, CutInStepSaga, {"n": 1})
        await session.commit()
    worker = SagaWorker(
        async_engine,
        store=AsyncSagaStore(async_engine, sync_engine=sync_engine),
        lease_seconds=2.0,
        poll_interval=0.05,
        listen=False,
    )
    task = asyncio.create_task(worker.run_until_stopped())

    def status() -> str:
        with sync_engine.connect() as connection:
            return str(connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id)))

    try:
        async with asyncio.timeout(30):
            while await asyncio.to_thread(status) not in ("completed", "compensated", "failed"):
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    assert terminated == {1}  # the connection really was cut once
    assert status() == "completed"
    assert compensated == []
    with sync_engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(effects)) == 1
        charge = connection.execute(
            sa.select(saga_steps.c.status, saga_steps.c.error).where(
                saga_steps.c.saga_id == saga_id, saga_steps.c.name == "charge"
            )
        ).one()
        stalled = connection.scalar(sa.select(sagas.c.stalled_claims).where(sagas.c.id == saga_id))
    assert charge.status == "completed"
    assert charge.error is None  # no failed attempt was recorded
    assert stalled == 0
