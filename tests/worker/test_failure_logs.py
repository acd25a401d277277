"""What the saga worker and the outbox relay log when the database fails under them.

* A connection cut (a PostgreSQL restart, seen through a TCP proxy that drops every
  connection) while a saga is in flight: one line per failure, at WARNING, without the
  statement's parameters (the saga's context and results: user data); the traceback only
  at DEBUG. It used to be an ERROR with a 110-line traceback per saga, parameters included.
* A role that may only SELECT: the worker and the relay stop and raise the error, instead
  of logging it every poll forever.
* A run whose writes fail in a way retrying cannot fix (a role without the privilege on
  the step table, a column missing): the worker gives the saga back and stops, raising it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sagaz import Saga, action, outbox
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.engines import create_async_engine
from sagaz.store.failures import is_fatal, sqlstate
from sagaz.store.schema import sagas
from sagaz.worker import SagaWorker
from tests.brokers.broker_helpers import TcpProxy
from tests.conftest import DatabaseUrls
from tests.roles import SELECT_ONLY, limited_role
from tests.worker.test_saga_worker import start, wait_for

MARKER = "marker-7d2a-user-data"
gates: dict[str, asyncio.Event] = {}
entered: dict[str, asyncio.Event] = {}


class GatedSaga(Saga):
    """Its step returns the context's marker once the test opens its gate."""

    saga_name = "failure-logs-gated"

    @action("echo")
    async def echo(self, ctx: Any) -> dict[str, Any]:
        entered[ctx["gate"]].set()
        await gates[ctx["gate"]].wait()
        return {"echo": ctx["marker"]}


@pytest.fixture
async def through_proxy(pg: DatabaseUrls) -> AsyncIterator[tuple[TcpProxy, AsyncEngine]]:
    server = make_url(pg.async_)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    await proxy.start()
    proxied = dataclasses.replace(
        pg, async_=server.set(port=proxy.port).render_as_string(hide_password=False)
    )
    engine = proxied.async_engine()
    yield proxy, engine
    await engine.dispose()
    await proxy.close()


def status_of(engine: sa.Engine, saga_id: str) -> str:
    with engine.connect() as connection:
        return str(connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id)))


async def test_a_cut_connection_is_one_line_per_failure_without_parameters(
    pg: DatabaseUrls,
    through_proxy: tuple[TcpProxy, AsyncEngine],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sagaz")
    proxy, engine = through_proxy
    gate = "cut"
    gates[gate], entered[gate] = asyncio.Event(), asyncio.Event()
    worker = SagaWorker(engine, lease_seconds=2.0, poll_interval=0.2, listen=False)
    relay = OutboxRelay(engine, InMemoryBroker(), poll_interval=0.2, listen=False)
    direct, sync_engine = pg.async_engine(), pg.sync_engine()
    tasks = [asyncio.create_task(runner.run_until_stopped()) for runner in (worker, relay)]
    try:
        [saga_id] = await start(direct, GatedSaga, [{"marker": MARKER, "gate": gate}])
        await asyncio.wait_for(entered[gate].wait(), 30)
        proxy.drop()  # what every connection sees when PostgreSQL restarts
        async with AsyncSession(direct) as session:
            outbox.add(session, "failure-logs", {"marker": MARKER})
            await session.commit()
        gates[gate].set()  # the step finishes: writing its result fails
        await wait_for(lambda: f"running saga {saga_id} stopped" in caplog.text)
        await wait_for(lambda: "pass failed" in caplog.text)
        proxy.restore()
        await wait_for(lambda: status_of(sync_engine, saga_id) == "completed", 60)
    finally:
        worker.stop()
        relay.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        await direct.dispose()
        sync_engine.dispose()
    failures = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert failures
    for record in caplog.records:
        message = record.getMessage()
        assert record.exc_info is None, message  # no traceback above DEBUG
        assert "\n" not in message, message
        assert MARKER not in message, message
    saga_failure = next(r for r in failures if f"running saga {saga_id} stopped" in r.getMessage())
    assert saga_failure.levelno == logging.WARNING  # transient: not an ERROR


async def test_tracebacks_are_logged_at_debug(
    through_proxy: tuple[TcpProxy, AsyncEngine], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sagaz.worker")
    proxy, engine = through_proxy
    proxy.drop()
    worker = SagaWorker(engine, poll_interval=0.2, listen=False)
    task = asyncio.create_task(worker.run_until_stopped())
    try:
        await wait_for(lambda: "claiming failed, retrying" in caplog.text)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30)
    line = next(r for r in caplog.records if "claiming failed, retrying" in r.getMessage())
    assert line.levelno == logging.WARNING
    assert line.exc_info is None
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)


@pytest.mark.parametrize("runner", ["worker", "relay"])
async def test_a_role_that_may_only_select_stops_the_runner(
    postgres_server_url: str, pg: DatabaseUrls, runner: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with broken_for_good(pg, postgres_server_url, "", SELECT_ONLY) as engine:
        running: SagaWorker | OutboxRelay = (
            SagaWorker(engine, poll_interval=0.1, listen=False)
            if runner == "worker"
            else OutboxRelay(engine, InMemoryBroker(), poll_interval=0.1, listen=False)
        )
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await asyncio.wait_for(running.run_until_stopped(), 30)
    assert sqlstate(caught.value) == "42501"
    stopping = [r for r in caplog.records if "failed, stopping" in r.getMessage()]
    # once each: the claim (worker), or the pass and the retention (relay, concurrent)
    assert 1 <= len(stopping) <= (1 if runner == "worker" else 2), caplog.text
    kinds = ["retention" in record.getMessage() for record in stopping]
    assert len(set(kinds)) == len(kinds)
    for record in stopping:
        assert record.levelno == logging.ERROR
        assert "permission denied for table" in record.getMessage()


class OneStepSaga(Saga):
    saga_name = "failure-logs-one-step"

    @action("only")
    async def only(self, ctx: Any) -> dict[str, Any]:
        return {"echo": ctx["marker"]}


#: What the role of the PostgreSQL case may do: everything but write step rows.
ALL_BUT_STEP_WRITES = (
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role}",
    "REVOKE INSERT, UPDATE ON {schema}.sagaz_saga_steps FROM {role}",
)


@contextlib.asynccontextmanager
async def broken_for_good(
    db: DatabaseUrls, server_url: str, sqlite_change: str, *grants: str
) -> AsyncIterator[AsyncEngine]:
    """An engine on which some of sagaz's statements fail in a way retrying cannot fix:
    on PostgreSQL a role with only `grants`, on SQLite after `sqlite_change` (a schema
    that lacks what the code needs)."""
    if db.dialect == "sqlite":
        sync_engine = db.sync_engine()
        with sync_engine.begin() as connection:
            connection.exec_driver_sql(sqlite_change)
        sync_engine.dispose()
        engine = db.async_engine()
        yield engine
        await engine.dispose()
        return
    with limited_role(server_url, db, *grants) as url:
        engine = create_async_engine(
            make_url(url).set(drivername="postgresql+asyncpg", query={}),
            connect_args={"server_settings": {"search_path": str(db.schema)}},
        )
        try:
            yield engine
        finally:
            await engine.dispose()


async def test_a_run_whose_writes_retrying_cannot_fix_stops_the_worker(
    postgres_server_url: str, db: DatabaseUrls, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to release the saga "for a retry" and log the same ERROR forever."""
    direct = db.async_engine()
    [saga_id] = await start(direct, OneStepSaga, [{"marker": MARKER}])
    await direct.dispose()
    # claims work; the run's step writes do not (no privilege / a column gone)
    drop_column = "ALTER TABLE sagaz_saga_steps DROP COLUMN result"
    async with broken_for_good(
        db, postgres_server_url, drop_column, *ALL_BUT_STEP_WRITES
    ) as engine:
        worker = SagaWorker(engine, poll_interval=0.1, listen=False)
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await asyncio.wait_for(worker.run_until_stopped(), 20)
    assert is_fatal(caught.value)
    stopping = [
        r for r in caplog.records if f"running saga {saga_id} failed, stopping" in r.getMessage()
    ]
    assert len(stopping) == 1, caplog.text
    assert stopping[0].levelno == logging.ERROR
    assert "for a retry" not in caplog.text
    assert MARKER not in caplog.text
    sync_engine = db.sync_engine()
    with sync_engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    sync_engine.dispose()
    assert row.lease_owner is None  # given back at once
    assert row.stalled_claims <= 0  # the claim refunded: not the saga's doing


async def test_a_retention_retrying_cannot_fix_stops_the_relay(
    postgres_server_url: str, db: DatabaseUrls, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to log the same ERROR every retention interval, forever."""
    # passes work; the retention's deletes do not (no DELETE privilege / a table gone)
    grant = "GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA {schema} TO {role}"
    async with broken_for_good(db, postgres_server_url, "DROP TABLE sagaz_inbox", grant) as engine:
        relay = OutboxRelay(
            engine, InMemoryBroker(), poll_interval=0.1, retention_interval=0.1, listen=False
        )
        with pytest.raises(sa.exc.DBAPIError) as caught:
            await asyncio.wait_for(relay.run_until_stopped(), 20)
    assert is_fatal(caught.value)
    stopping = [r for r in caplog.records if "retention failed, stopping" in r.getMessage()]
    assert len(stopping) == 1, caplog.text
    assert stopping[0].levelno == logging.ERROR
    assert not relay.running
