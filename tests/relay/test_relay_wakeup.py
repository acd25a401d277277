"""A running relay wakes at once: on the in-process post-commit signal, and on
PostgreSQL NOTIFY from another connection (re-LISTENing after its connection drops).

The relays here poll only every 30 s, so an event published within the test's wait
proves the wake-up; nothing else about timing is asserted."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.listen import NotificationListener
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.statements import OUTBOX_CHANNEL
from tests.brokers.broker_helpers import TcpProxy
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually

POLL = 30.0
WAIT = 10.0


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


@pytest.fixture
def pg_engine(pg: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = pg.sync_engine()
    yield engine
    engine.dispose()


@pytest.fixture(params=["asyncpg", "psycopg"])
async def pg_async_engine(
    pg: DatabaseUrls, request: pytest.FixtureRequest
) -> AsyncIterator[AsyncEngine]:
    urls = pg if request.param == "asyncpg" else dataclasses.replace(pg, async_=pg.sync)
    engine = urls.async_engine()
    yield engine
    await engine.dispose()


async def started(relay: OutboxRelay) -> asyncio.Task[None]:
    """Start `relay` and return once it is LISTENing (if it does) and waits for a wake-up:
    from then on, only a new wake-up (or the 30 s poll) makes it look again."""
    task = asyncio.create_task(relay.run_until_stopped())
    if relay.listen:
        await eventually(lambda: relay.listener is not None and relay.listener.listening.is_set())
    await eventually(relay.idle.is_set)
    return task


async def stopped(relay: OutboxRelay, task: asyncio.Task[None]) -> None:
    relay.stop()
    await asyncio.wait_for(task, WAIT)


def insert_and_notify_elsewhere(engine: sa.Engine) -> str:
    """What another process's `outbox.add` + commit does, on a plain connection."""
    event_id = str(uuid.uuid4())
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(outbox_table).values(
                id=event_id,
                topic="t.elsewhere",
                payload={},
                headers={},
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
            )
        )
        connection.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, "")))
    return event_id


@pytest.mark.parametrize("concurrency", [1, 2])
async def test_the_commit_signal_wakes_a_relay_in_the_same_process(
    engine: sa.Engine, async_engine: AsyncEngine, concurrency: int
) -> None:
    broker = InMemoryBroker()
    relay = OutboxRelay(
        async_engine, broker, poll_interval=POLL, listen=False, concurrency=concurrency
    )
    [first] = add_events(engine, [("t", 1, None)])
    task = await started(relay)
    try:
        assert broker.ids() == [first]
        [second] = await asyncio.to_thread(add_events, engine, [("t", 2, None)])
        await eventually(lambda: broker.ids() == [first, second], within=WAIT)
    finally:
        await stopped(relay, task)


async def test_notify_from_another_connection_wakes_the_relay(
    pg_engine: sa.Engine, pg_async_engine: AsyncEngine
) -> None:
    broker = InMemoryBroker()
    relay = OutboxRelay(pg_async_engine, broker, poll_interval=POLL)
    task = await started(relay)
    try:
        event_id = insert_and_notify_elsewhere(pg_engine)
        await eventually(lambda: broker.ids() == [event_id], within=WAIT)
    finally:
        await stopped(relay, task)


async def test_the_listener_reconnects_after_its_connection_is_killed(
    pg_engine: sa.Engine, pg_async_engine: AsyncEngine
) -> None:
    broker = InMemoryBroker()
    relay = OutboxRelay(pg_async_engine, broker, poll_interval=POLL)
    task = await started(relay)
    try:
        listener = relay.listener
        assert listener is not None
        killed = listener.backend_pid
        with pg_engine.begin() as connection:
            assert connection.scalar(sa.select(sa.func.pg_terminate_backend(killed)))
        await eventually(
            lambda: listener.listening.is_set() and listener.backend_pid not in (None, killed),
            within=WAIT,
        )
        await eventually(relay.idle.is_set)
        event_id = insert_and_notify_elsewhere(pg_engine)
        await eventually(lambda: broker.ids() == [event_id], within=WAIT)
    finally:
        await stopped(relay, task)


async def test_stop_returns_promptly_and_leaves_no_listening_connection(
    pg: DatabaseUrls, pg_engine: sa.Engine, pg_async_engine: AsyncEngine
) -> None:
    relay = OutboxRelay(pg_async_engine, InMemoryBroker(), poll_interval=POLL)
    task = await started(relay)
    await stopped(relay, task)
    assert not relay.running
    await pg_async_engine.dispose()
    with pg_engine.connect() as connection:
        left = connection.scalar(
            sa.text(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
                "AND pid <> pg_backend_pid()"
            ),
            {"name": pg.application_name},
        )
    assert left == 0


async def test_stop_before_the_loop_runs_is_not_lost(async_engine: AsyncEngine) -> None:
    relay = OutboxRelay(async_engine, InMemoryBroker(), poll_interval=POLL, listen=False)
    relay.stop()
    await asyncio.wait_for(relay.run_until_stopped(), WAIT)
    assert not relay.running


async def test_a_relay_rides_out_a_database_outage(
    pg: DatabaseUrls, pg_engine: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    """The relay's connections (pool and LISTEN) go through a proxy that drops them."""
    server = make_url(pg.async_)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    await proxy.start()
    through_proxy = dataclasses.replace(
        pg, async_=server.set(port=proxy.port).render_as_string(hide_password=False)
    )
    engine = through_proxy.async_engine()
    broker = InMemoryBroker()
    relay = OutboxRelay(engine, broker, poll_interval=0.2, claim_seconds=1.0)

    def published() -> int:
        with pg_engine.connect() as connection:
            return connection.scalar(
                sa.select(sa.func.count()).where(outbox_table.c.status == "published")
            )

    try:
        task = await started(relay)
        [before] = add_events(pg_engine, [("t", 1, "k")])
        await eventually(lambda: published() == 1, within=WAIT)
        proxy.drop()
        [during] = add_events(pg_engine, [("t", 2, "k")])
        await eventually(lambda: "pass failed" in caplog.text, within=WAIT)
        assert relay.listener is not None
        await eventually(lambda: not relay.listener.listening.is_set(), within=WAIT)
        proxy.restore()
        await eventually(lambda: published() == 2, within=WAIT)
        assert broker.ids() == [before, during]
        await eventually(relay.listener.listening.is_set, within=WAIT)
        await stopped(relay, task)
    finally:
        await engine.dispose()
        await proxy.close()


async def test_the_listener_ignores_notifications_for_another_schema(
    pg: DatabaseUrls, pg_engine: sa.Engine, pg_async_engine: AsyncEngine
) -> None:
    calls: list[int] = []
    listener = NotificationListener(pg_async_engine, OUTBOX_CHANNEL, lambda: calls.append(1))
    task = asyncio.create_task(listener.run())

    def notify(payload: sa.ColumnElement[str] | str) -> None:
        with pg_engine.begin() as connection:
            connection.execute(sa.select(sa.func.pg_notify(OUTBOX_CHANNEL, payload)))

    try:
        await eventually(listener.listening.is_set)
        assert calls == [1]  # every (re)connect calls back once: notifications may be lost
        assert listener.schema == pg.schema
        notify("some_other_schema")
        notify(sa.func.current_schema())  # what outbox.add sends
        await eventually(lambda: len(calls) == 2, within=WAIT)
        notify("")  # no schema: everyone
        await eventually(lambda: len(calls) == 3, within=WAIT)
        assert len(calls) == 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
