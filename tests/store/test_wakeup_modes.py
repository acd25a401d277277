"""How a commit wakes workers in other processes (sagaz.store.wakeup), on a real
PostgreSQL with a real LISTENing connection: each mode delivers on commit and never on
rollback; the default ("commit") keeps the NOTIFY out of the committing transaction,
coalesces wake-ups, and leaves no thread or connection behind after `dispose()`."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sagaz import Saga, action, outbox, start_saga
from sagaz.errors import ConfigurationError
from sagaz.signals import outbox_signal
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.wakeup import WAKEUP_KEY, notifier_for
from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import settled_pg_connections

pytestmark = pytest.mark.postgres


class WakeSaga(Saga):
    saga_name = "wakeup-modes"

    @action("noop")
    async def noop(self, ctx: Any) -> None:
        return None


@pytest.fixture
def listener(pg: DatabaseUrls) -> Iterator[psycopg.Connection[Any]]:
    """A raw connection LISTENing on both channels (outside the test's application_name,
    so connection counts ignore it)."""
    with psycopg.connect(pg.sync.replace("postgresql+psycopg", "postgresql"), autocommit=True) as c:
        c.execute("LISTEN sagaz_outbox")
        c.execute("LISTEN sagaz_sagas")
        yield c


@pytest.fixture
def pg_admin(postgres_server_url: str) -> Iterator[sa.Engine]:
    """An engine outside the test's application_name, for pg_stat_activity."""
    engine = sa.create_engine(
        make_url(postgres_server_url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool
    )
    yield engine
    engine.dispose()


def received(listener: psycopg.Connection[Any], schema: str | None, seconds: float) -> list[str]:
    """Channels notified for `schema` within `seconds` (other tests share the database)."""
    return sorted(n.channel for n in listener.notifies(timeout=seconds) if n.payload == schema)


def both_channels(listener: psycopg.Connection[Any], schema: str | None) -> bool:
    """Whether both channels are notified for `schema` within 5 s."""
    channels: set[str] = set()
    for notification in listener.notifies(timeout=5):
        if notification.payload == schema:
            channels.add(notification.channel)
        if len(channels) == 2:
            break
    return channels == {"sagaz_outbox", "sagaz_sagas"}


def commit_one(engine: sa.Engine, mode: str | None = None) -> None:
    with Session(engine, info={} if mode is None else {WAKEUP_KEY: mode}) as session:
        start_saga(session, WakeSaga, {})
        outbox.add(session, "t", {})
        session.commit()


@pytest.mark.parametrize("mode", ["commit", "transaction"])
def test_each_mode_notifies_on_commit_never_on_rollback(
    pg: DatabaseUrls, listener: psycopg.Connection[Any], mode: str
) -> None:
    engine = pg.sync_engine()
    try:
        with Session(engine, info={WAKEUP_KEY: mode}) as session:
            start_saga(session, WakeSaga, {})
            outbox.add(session, "t", {})
            session.flush()
            session.rollback()
        assert received(listener, pg.schema, 0.3) == []
        commit_one(engine, mode)
        assert both_channels(listener, pg.schema)
    finally:
        engine.dispose()


async def test_off_notifies_nobody_elsewhere_but_wakes_this_process(
    pg: DatabaseUrls, listener: psycopg.Connection[Any]
) -> None:
    engine = pg.sync_engine()
    woken = outbox_signal.subscribe()
    try:
        commit_one(engine, "off")
        assert await woken.wait(5)
        assert received(listener, pg.schema, 0.5) == []
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 1
    finally:
        woken.close()
        engine.dispose()


def test_the_default_sends_one_notify_for_commits_made_meanwhile(
    pg: DatabaseUrls, listener: psycopg.Connection[Any]
) -> None:
    """While the notifier is busy (here: held), the commits' wake-ups pile up and go out
    as ONE NOTIFY statement; nothing is lost."""
    engine = pg.sync_engine()
    notifier = notifier_for(engine)
    try:
        with notifier._condition:  # the sender cannot take the pending wake-ups yet
            for _ in range(10):
                commit_one(engine)
            assert notifier.sent == 0
        assert both_channels(listener, pg.schema)
        assert notifier.sent == 1
        assert received(listener, pg.schema, 0.3) == []  # and only once
    finally:
        engine.dispose()


def test_a_repeated_idempotent_start_notifies_nobody(
    pg: DatabaseUrls, listener: psycopg.Connection[Any]
) -> None:
    engine = pg.sync_engine()
    try:
        for _ in range(2):
            with Session(engine) as session:
                start_saga(session, WakeSaga, {}, idempotency_key="once")
                session.commit()
            assert received(listener, pg.schema, 2 if _ == 0 else 0.3)[:1] == (
                ["sagaz_sagas"] if _ == 0 else []
            )
    finally:
        engine.dispose()


def test_the_notifier_needs_no_connection_beyond_the_pool(
    pg: DatabaseUrls, listener: psycopg.Connection[Any], pg_admin: sa.Engine
) -> None:
    """A pool of ONE connection: the NOTIFY borrows it after the request gave it back."""
    engine = pg.sync_engine(pool_size=1, max_overflow=0, pool_timeout=10)
    try:
        for _ in range(3):
            commit_one(engine)
            assert received(listener, pg.schema, 5)
        with pg_admin.connect() as connection:
            assert (
                connection.scalar(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": pg.application_name},
                )
                == 1
            )
    finally:
        engine.dispose()


def test_dispose_ends_the_notifier_thread_and_leaves_no_connection(
    pg: DatabaseUrls, listener: psycopg.Connection[Any], pg_admin: sa.Engine
) -> None:
    engine = pg.sync_engine()
    commit_one(engine)
    assert received(listener, pg.schema, 5)
    engine.dispose()
    assert [t for t in threading.enumerate() if t.name == "sagaz-notify"] == []
    assert settled_pg_connections(pg_admin, str(pg.application_name), at_most=0) == 0


async def test_an_async_session_notifies_after_commit_and_dispose_closes_it(
    pg: DatabaseUrls, listener: psycopg.Connection[Any], pg_admin: sa.Engine
) -> None:
    engine = pg.async_engine()  # asyncpg
    try:
        async with AsyncSession(engine) as session:
            start_saga(session, WakeSaga, {})
            outbox.add(session, "t", {})
            await session.commit()
        channels: list[str] = []
        while len(channels) < 2:  # the sender is a task on this loop: let it run
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT pg_sleep(0.05)"))
            channels += received(listener, pg.schema, 0.05)
        assert sorted(channels) == ["sagaz_outbox", "sagaz_sagas"]
    finally:
        await engine.dispose()
    assert settled_pg_connections(pg_admin, str(pg.application_name), at_most=0) == 0


async def test_the_async_notify_leaves_its_pooled_connection_as_it_found_it(
    pg: DatabaseUrls, listener: psycopg.Connection[Any]
) -> None:
    """One pooled connection: after the NOTIFY went out on it, the next session's
    transaction there still begins, isolates and rolls back as configured."""
    engine = pg.async_engine(pool_size=1, max_overflow=0, isolation_level="REPEATABLE READ")
    try:
        async with AsyncSession(engine) as session:
            start_saga(session, WakeSaga, {})
            await session.commit()
        notifier = notifier_for(engine.sync_engine)
        while notifier.sent == 0:  # the sender is a task on this loop: let it run
            async with engine.connect() as connection:
                await connection.execute(sa.text("SELECT pg_sleep(0.01)"))
        assert received(listener, pg.schema, 1.0) == ["sagaz_sagas"]
        async with AsyncSession(engine) as session:
            level = await session.scalar(sa.text("SHOW transaction_isolation"))
            start_saga(session, WakeSaga, {})
            await session.flush()
            await session.rollback()
        async with engine.connect() as connection:
            count = await connection.scalar(sa.text("SELECT count(*) FROM sagaz_sagas"))
        assert (level, count) == ("repeatable read", 1)
    finally:
        await engine.dispose()


def _commit_in_forked_child(engine: sa.Engine) -> None:
    import time

    commit_one(engine)  # no dispose(): nothing would reset the notifier but the fork hook
    notifier = notifier_for(engine)
    deadline = time.monotonic() + 10
    # stay alive until the NOTIFY went out and the notifier's thread ended
    while (notifier.sent == 0 or notifier._thread is not None) and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_forked_child_sends_its_own_notify(
    pg: DatabaseUrls, listener: psycopg.Connection[Any]
) -> None:
    """A process forked after its parent's notifier started (e.g. a pre-forking server)
    gets a notifier of its own: the parent's thread did not come along."""
    import multiprocessing

    engine = pg.sync_engine(poolclass=sa.NullPool)  # no pooled connection to share
    try:
        commit_one(engine)  # the parent's notifier thread runs
        assert both_channels(listener, pg.schema)
        child = multiprocessing.get_context("fork").Process(
            target=_commit_in_forked_child, args=(engine,)
        )
        child.start()
        child.join(30)
        assert child.exitcode == 0
        assert both_channels(listener, pg.schema)
    finally:
        engine.dispose()


def test_an_unknown_mode_is_refused_before_anything_is_written(pg: DatabaseUrls) -> None:
    engine = pg.sync_engine()
    try:
        with Session(engine, info={WAKEUP_KEY: "sometimes"}) as session:
            outbox.add(session, "t", {})
            with pytest.raises(ConfigurationError, match=r"sagaz\.wakeup.*sometimes"):
                session.commit()
        with engine.connect() as connection:
            assert connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 0
    finally:
        engine.dispose()
