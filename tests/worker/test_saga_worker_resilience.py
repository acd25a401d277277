"""The saga worker against a misbehaving PostgreSQL: it rides out an outage (claims fail,
then resume), a write the database refuses for one saga fails that saga alone - not
the others group-committed with it - and its retry backs off, and runs ended by a lost
connection do not spend the saga's give-up budget.

The refusal is real: a trigger on the steps table raises for one step name."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz import Saga, action
from sagaz.store.schema import sagas
from sagaz.store.stores import AsyncSagaStore
from sagaz.worker import SagaWorker
from tests.brokers.broker_helpers import TcpProxy
from tests.conftest import DatabaseUrls
from tests.worker.test_saga_worker import RunningWorker, start, wait_for


class QuickSaga(Saga):
    saga_name = "resilience-quick"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        return {"a": ctx["n"]}

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> None:
        return None


class PoisonedSaga(Saga):
    saga_name = "resilience-poisoned"

    @action("a")
    async def a(self, ctx: Any) -> None:
        return None

    @action("poison", depends_on=["a"])
    async def poison(self, ctx: Any) -> None:
        return None


GATE = asyncio.Event()
ENTERED: list[int] = []


class GatedSaga(Saga):
    saga_name = "resilience-gated"

    @action("wait")
    async def wait(self, ctx: Any) -> None:
        ENTERED.append(1)
        await GATE.wait()


async def wait_in_loop(check: Any, seconds: float = 30) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


@pytest.fixture
async def pg_engines(pg: DatabaseUrls) -> AsyncIterator[tuple[AsyncEngine, sa.Engine]]:
    async_engine = pg.async_engine()
    sync_engine = pg.sync_engine()
    yield async_engine, sync_engine
    await async_engine.dispose()
    sync_engine.dispose()


def row_of(engine: sa.Engine, saga_id: str) -> sa.Row[Any]:
    with engine.connect() as connection:
        return connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()


def statuses(engine: sa.Engine, ids: list[str]) -> set[str]:
    with engine.connect() as connection:
        return set(connection.scalars(sa.select(sagas.c.status).where(sagas.c.id.in_(ids))))


async def test_a_refused_write_fails_its_saga_alone_and_its_retry_backs_off(
    pg_engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = pg_engines
    with sync_engine.begin() as connection:
        connection.execute(
            sa.text(
                """
                CREATE FUNCTION refuse_poison() RETURNS trigger AS $$
                BEGIN
                    IF NEW.name = 'poison' THEN
                        RAISE EXCEPTION 'the database refuses step poison';
                    END IF;
                    RETURN NEW;
                END $$ LANGUAGE plpgsql
                """
            )
        )
        connection.execute(
            sa.text(
                "CREATE TRIGGER refuse_poison BEFORE INSERT OR UPDATE ON sagaz_saga_steps "
                "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
            )
        )
    [poisoned] = await start(async_engine, PoisonedSaga, [{"n": 0}])
    quick = await start(async_engine, QuickSaga, [{"n": n} for n in range(30)])
    worker = SagaWorker(
        async_engine,
        store=AsyncSagaStore(async_engine, sync_engine=sync_engine),
        concurrency=40,
        lease_seconds=2.0,
        poll_interval=0.05,
    )
    task = asyncio.create_task(worker.run_until_stopped())
    try:
        await wait_for(lambda: statuses(sync_engine, quick) == {"completed"})

        def released_with_backoff() -> bool:
            row = row_of(sync_engine, poisoned)
            return row.lease_owner is None and row.lease_expires_at is not None

        await wait_for(released_with_backoff)
        row = row_of(sync_engine, poisoned)
        assert row.status == "running"
        assert row.lease_expires_at > row.updated_at  # not claimable again at once
    finally:
        worker.stop()
        await task
    with sync_engine.connect() as connection:
        attempts = set(connection.scalars(sa.select(sagas.c.attempts).where(sagas.c.id.in_(quick))))
    assert attempts == {1}  # none of the innocent sagas was failed and run again


@pytest.fixture
async def proxied(pg: DatabaseUrls) -> AsyncIterator[tuple[TcpProxy, AsyncEngine, AsyncEngine]]:
    """A proxy in front of PostgreSQL, an engine through it and one not."""
    server = make_url(pg.async_)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    await proxy.start()
    through_proxy = dataclasses.replace(
        pg, async_=server.set(port=proxy.port).render_as_string(hide_password=False)
    )
    engine = through_proxy.async_engine()
    direct = pg.async_engine()
    try:
        yield proxy, engine, direct
    finally:
        await engine.dispose()
        await direct.dispose()
        await proxy.close()


async def test_the_worker_rides_out_a_database_outage(
    pg_engines: tuple[AsyncEngine, sa.Engine],
    proxied: tuple[TcpProxy, AsyncEngine, AsyncEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worker's connections (pool and LISTEN) go through a proxy that drops them."""
    _async_engine, sync_engine = pg_engines
    proxy, engine, direct = proxied
    worker = SagaWorker(
        engine,
        store=AsyncSagaStore(engine, sync_engine=sync_engine),
        lease_seconds=2.0,
        poll_interval=0.2,
    )
    running = RunningWorker(worker)
    try:
        before = await start(direct, QuickSaga, [{"n": 1}])
        await wait_for(lambda: statuses(sync_engine, before) == {"completed"})
        proxy.drop()
        during = await start(direct, QuickSaga, [{"n": 2}])
        await wait_for(lambda: "claiming failed" in caplog.text)
        assert not running.task.done()  # the worker is still running
        proxy.restore()
        await wait_for(lambda: statuses(sync_engine, during) == {"completed"})
    finally:
        await running.stop()


async def test_runs_ended_by_a_lost_connection_do_not_spend_the_give_up_budget(
    pg_engines: tuple[AsyncEngine, sa.Engine], proxied: tuple[TcpProxy, AsyncEngine, AsyncEngine]
) -> None:
    """Seven claims of one saga, the first six ended by cutting the worker's database
    connections while the step runs (no step finishes in any of them): with max_attempts
    3 the saga is not given up, and completes - those claims were refunded."""
    _async_engine, sync_engine = pg_engines
    proxy, engine, direct = proxied
    ENTERED.clear()
    GATE.clear()
    # Fewer than the six cuts below: without the refund the saga would be given up.
    worker = SagaWorker(engine, lease_seconds=2.0, poll_interval=0.05, max_attempts=3)
    running = RunningWorker(worker)
    try:
        (saga_id,) = await start(direct, GatedSaga, [{}])
        for cut in range(1, 7):
            await wait_in_loop(lambda cut=cut: len(ENTERED) == cut)
            proxy.drop()  # the step's completion cannot be written
            GATE.set()
            await wait_in_loop(lambda cut=cut: running.worker.interrupted == cut)
            GATE.clear()
            proxy.restore()
        await wait_in_loop(lambda: len(ENTERED) == 7)
        GATE.set()
        await wait_for(lambda: statuses(sync_engine, [saga_id]) == {"completed"})
    finally:
        await running.stop()
    with sync_engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    assert (row.attempts, row.error) == (7, None)
