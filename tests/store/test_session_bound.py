"""The core promise (DESIGN rule 1): start_saga and outbox.add commit with the
application's rows through its own session, or not at all - on real PostgreSQL (psycopg
sync, asyncpg async) and SQLite."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_scoped_session
from sqlalchemy.ext.asyncio import async_sessionmaker as make_async_sessions
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session
from sqlalchemy.orm import sessionmaker as make_sessions

from sagaz import Saga, SagaContextManager, action, outbox, start_saga
from sagaz.errors import InvalidContextError, UnknownSagaError
from sagaz.signals import outbox_signal, saga_signal
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from sagaz.store.unit_of_work import pending_rows, sync_session_of
from tests.conftest import DatabaseUrls


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "app_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


class OrderSaga(Saga):
    saga_name = "session-bound-order"

    @action("reserve")
    async def reserve(self, ctx: Any) -> None:
        return None


@pytest.fixture
def engine(sync_engine: sa.Engine) -> sa.Engine:
    Base.metadata.create_all(sync_engine)
    return sync_engine


@pytest.fixture
async def aengine(async_engine: AsyncEngine) -> AsyncEngine:
    async with async_engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    return async_engine


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(Order.__table__)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) or 0,
        )


def unit_of_work(session: Any, order_id: int, key: str | None = None) -> str:
    """An order, its saga and two events, through `session`: a Session, an AsyncSession,
    or a scoped_session / async_scoped_session proxy."""
    session.add(Order(id=order_id, total=42))
    saga_id = start_saga(session, OrderSaga, {"order_id": order_id}, idempotency_key=key)
    outbox.add(session, "orders.created", {"order_id": order_id}, key=str(order_id))
    outbox.add(session, "orders.audit", {"order_id": order_id})
    return saga_id


def test_commit_writes_all_rows(engine: sa.Engine) -> None:
    with Session(engine) as session:
        saga_id = unit_of_work(session, 1)
        session.commit()
    assert counts(engine) == (1, 1, 2)
    with engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    assert row.status == "pending"
    assert row.name == "session-bound-order"
    assert row.context == {"order_id": 1}


def test_rollback_leaves_nothing_even_when_session_is_reused(engine: sa.Engine) -> None:
    with Session(engine) as session:
        unit_of_work(session, 1)
        session.flush()  # rows written inside the transaction...
        session.rollback()  # ...and undone with it
        unit_of_work(session, 2)
        session.rollback()  # queued but never written
        session.add(Order(id=3, total=1))
        session.commit()  # the reused session commits only its own new work
    assert counts(engine) == (1, 0, 0)


@pytest.mark.parametrize("discard", ["rollback", "close"])
def test_a_start_before_anything_else_is_discarded_by_rollback_or_close(
    engine: sa.Engine, discard: str
) -> None:
    """start_saga and outbox.add as the first calls on a fresh session (no transaction
    begun yet): a rollback or close discards them, and the reused session commits only
    its own new work."""
    with Session(engine) as session:
        start_saga(session, OrderSaga, {"n": 1})
        outbox.add(session, "orders.created", {"n": 1})
        getattr(session, discard)()
        session.add(Order(id=2, total=1))
        session.commit()
    assert counts(engine) == (1, 0, 0)


async def test_a_start_before_anything_else_is_discarded_by_async_rollback(
    aengine: AsyncEngine, db: DatabaseUrls
) -> None:
    async with AsyncSession(aengine) as session:
        start_saga(session, OrderSaga, {"n": 1})
        outbox.add(session, "orders.created", {"n": 1})
        await session.rollback()
        session.add(Order(id=2, total=1))
        await session.commit()
    engine = db.sync_engine()
    try:
        assert counts(engine) == (1, 0, 0)
    finally:
        engine.dispose()


def test_savepoint_rollback_drops_only_what_it_wrapped(engine: sa.Engine) -> None:
    with Session(engine) as session:
        session.add(Order(id=1, total=1))
        outbox.add(session, "kept.before", {"n": 1})
        nested = session.begin_nested()
        start_saga(session, OrderSaga, {"n": 2})
        outbox.add(session, "dropped", {"n": 2})
        nested.rollback()  # queued, never written
        with pytest.raises(RuntimeError), session.begin_nested():
            start_saga(session, OrderSaga, {"n": 3})
            session.flush()  # written inside the savepoint, then rolled back
            raise RuntimeError("abort savepoint")
        with session.begin_nested():
            outbox.add(session, "kept.released", {"n": 4})
        session.commit()
    assert counts(engine) == (1, 0, 2)
    with engine.connect() as connection:
        topics = set(connection.scalars(sa.select(outbox_table.c.topic)))
    assert topics == {"kept.before", "kept.released"}


def test_exception_in_unit_of_work_leaves_nothing(engine: sa.Engine) -> None:
    with pytest.raises(RuntimeError), Session(engine) as session, session.begin():
        unit_of_work(session, 1)
        raise RuntimeError("view failed")
    assert counts(engine) == (0, 0, 0)


async def test_async_session_commit_and_rollback(aengine: AsyncEngine, db: DatabaseUrls) -> None:
    async with AsyncSession(aengine) as session:
        unit_of_work(session, 1)
        await session.commit()
        unit_of_work(session, 2)
        await session.flush()
        await session.rollback()
        unit_of_work(session, 3)
        await session.rollback()
        async with session.begin():
            session.add(Order(id=4, total=1))
            nested = await session.begin_nested()
            start_saga(session, OrderSaga, {"n": 4})
            await session.flush()
            await nested.rollback()
    sync = db.sync_engine()
    try:
        assert counts(sync) == (2, 1, 2)
    finally:
        sync.dispose()


async def test_async_savepoint_rollback_of_queued_rows(
    aengine: AsyncEngine, db: DatabaseUrls
) -> None:
    async with AsyncSession(aengine) as session:
        session.add(Order(id=1, total=1))
        nested = await session.begin_nested()
        start_saga(session, OrderSaga, {"n": 1})
        outbox.add(session, "dropped", {"n": 1})
        await nested.rollback()
        start_saga(session, OrderSaga, {"n": 2})
        await session.commit()
    sync = db.sync_engine()
    try:
        assert counts(sync) == (1, 1, 0)
    finally:
        sync.dispose()


def test_idempotency_key_returns_same_id_and_one_saga(engine: sa.Engine) -> None:
    with Session(engine) as session:
        first = start_saga(session, OrderSaga, {"n": 1}, idempotency_key="order-1")
        session.commit()
    with Session(engine) as session:
        again = start_saga(session, OrderSaga, {"n": 2}, idempotency_key="order-1")
        other = start_saga(session, "session-bound-order", {"n": 3}, idempotency_key="order-2")
        session.commit()
    assert first == again != other
    assert counts(engine)[1] == 2


async def test_fifty_concurrent_starts_with_one_key_create_one_saga(
    pg: DatabaseUrls,
) -> None:
    engine = pg.async_engine(pool_size=50, max_overflow=0)
    try:

        async def start() -> str:
            async with AsyncSession(engine) as session:
                saga_id = start_saga(session, OrderSaga, {"n": 1}, idempotency_key="same")
                await session.commit()
                return saga_id

        ids = await asyncio.gather(*(start() for _ in range(50)))
        async with engine.connect() as connection:
            stored = (await connection.execute(sa.select(sagas.c.id))).scalars().all()
    finally:
        await engine.dispose()
    assert len(set(ids)) == 1
    assert stored == [ids[0]]


def test_correlation_id_recorded_on_saga_and_headers(engine: sa.Engine) -> None:
    with SagaContextManager.scope("corr-123"), Session(engine) as session:
        saga_id = start_saga(session, OrderSaga, {})
        outbox.add(session, "t", {}, headers={"x-tenant": "acme"})
        outbox.add(session, "t", {}, headers={"correlation-id": "explicit"})
        session.commit()
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sagas.c.correlation_id)) == "corr-123"
        assert connection.scalar(sa.select(sagas.c.id)) == saga_id
        headers = list(
            connection.scalars(sa.select(outbox_table.c.headers).order_by(outbox_table.c.seq))
        )
    assert headers == [
        {"x-tenant": "acme", "correlation-id": "corr-123"},
        {"correlation-id": "explicit"},
    ]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (
            lambda s: start_saga(s, OrderSaga, {"when": object()}),
            InvalidContextError,
            "context['when']",
        ),
        (
            lambda s: start_saga(s, OrderSaga, {"a": {"b": float("nan")}}),
            InvalidContextError,
            "context['a']['b']",
        ),
        (lambda s: start_saga(s, "no-such-saga", {}), UnknownSagaError, "no-such-saga"),
        (
            lambda s: start_saga(s, OrderSaga, {}, idempotency_key=""),
            InvalidContextError,
            "idempotency_key",
        ),
        (
            lambda s: start_saga(s, OrderSaga, {}, idempotency_key="k" * 256),
            InvalidContextError,
            "idempotency_key",
        ),
        (lambda s: outbox.add(s, "t", {"x": {1, 2}}), InvalidContextError, "payload['x']"),
        (lambda s: outbox.add(s, "", {}), InvalidContextError, "topic"),
        (lambda s: outbox.add(s, "bad topic\n", {}), InvalidContextError, "topic"),
        (lambda s: outbox.add(s, "t", {}, headers={"h": 1}), InvalidContextError, "header 'h'"),  # type: ignore[dict-item]
        (
            lambda s: outbox.add(s, "t", {}, headers={"h": "a\r\nInjected: 1"}),
            InvalidContextError,
            "control",
        ),
        (
            lambda s: outbox.add(s, "t", {}, headers={"h": "x" * 5000}),
            InvalidContextError,
            "header 'h'",
        ),
        (
            lambda s: outbox.add(s, "t", {}, headers={"bad name": "v"}),
            InvalidContextError,
            "header name",
        ),
        (
            lambda s: outbox.add(s, "t", {}, headers={f"h{i}": "v" for i in range(40)}),
            InvalidContextError,
            "headers",
        ),
        (lambda s: outbox.add(s, "t", {}, key=5), InvalidContextError, "key"),  # type: ignore[arg-type]
    ],
)
def test_bad_input_is_refused_before_anything_is_queued(
    engine: sa.Engine, call: Any, error: type[Exception], message: str
) -> None:
    with Session(engine) as session:
        start_saga(session, OrderSaga, {"ok": True})
        outbox.add(session, "ok", {})
        with pytest.raises(error, match=__import__("re").escape(message)):
            call(session)
        assert len(pending_rows(session, sagas)) == 1
        assert len(pending_rows(session, outbox_table)) == 1
        session.commit()  # committed work is intact
    assert counts(engine) == (0, 1, 1)


def test_not_a_session_is_refused() -> None:
    with pytest.raises(TypeError, match="Session or AsyncSession"):
        start_saga(object(), OrderSaga, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Session or AsyncSession"):
        outbox.add("session", "t", {})  # type: ignore[arg-type]


async def test_local_workers_are_woken_on_commit_not_on_rollback(engine: sa.Engine) -> None:
    sagas_woken = saga_signal.subscribe()
    events_woken = outbox_signal.subscribe()
    try:
        with Session(engine) as session:
            start_saga(session, OrderSaga, {})
            outbox.add(session, "t", {})
            session.flush()
            session.rollback()
        assert not await sagas_woken.wait(0.05)
        assert not await events_woken.wait(0.01)
        with Session(engine) as session:
            start_saga(session, OrderSaga, {})
            nested = session.begin_nested()
            outbox.add(session, "t", {})
            nested.commit()  # releasing a savepoint is not a commit: nobody wakes yet
            assert not await sagas_woken.wait(0.01)
            session.commit()
        assert await sagas_woken.wait(1)
        assert await events_woken.wait(1)
    finally:
        sagas_woken.close()
        events_woken.close()


def test_postgres_notify_is_delivered_only_on_commit(pg: DatabaseUrls) -> None:
    import psycopg

    engine = pg.sync_engine()
    Base.metadata.create_all(engine)
    listener_url = pg.sync.replace("postgresql+psycopg", "postgresql")
    try:
        with psycopg.connect(listener_url, autocommit=True) as listener:
            listener.execute("LISTEN sagaz_outbox")
            listener.execute("LISTEN sagaz_sagas")
            with Session(engine) as session:
                outbox.add(session, "t", {})
                session.flush()
                session.rollback()
            # Only this test's schema counts: other tests may notify in the same database.
            assert [n for n in listener.notifies(timeout=0.2) if n.payload == pg.schema] == []
            with Session(engine) as session:
                start_saga(session, OrderSaga, {})
                outbox.add(session, "t", {})
                outbox.add(session, "t", {})
                session.commit()
            channels = []
            for notification in listener.notifies(timeout=2):
                if notification.payload == pg.schema:
                    channels.append(notification.channel)
                if len(channels) == 2:
                    break
    finally:
        engine.dispose()
    assert sorted(channels) == ["sagaz_outbox", "sagaz_sagas"]


async def test_a_unit_of_work_larger_than_one_statement_is_chunked(
    aengine: AsyncEngine, db: DatabaseUrls
) -> None:
    """3,000 sagas in one transaction exceed asyncpg's 32,767 parameters per statement."""
    async with AsyncSession(aengine) as session:
        for n in range(3000):
            start_saga(session, OrderSaga, {"n": n})
        await session.commit()
    sync = db.sync_engine()
    try:
        assert counts(sync) == (0, 3000, 0)
    finally:
        sync.dispose()


# -- scoped sessions: Flask-SQLAlchemy's db.session is a scoped_session --------------------


@pytest.fixture
def scoped(engine: sa.Engine) -> Iterator[scoped_session[Session]]:
    registry = scoped_session(make_sessions(engine))
    yield registry
    registry.remove()


def test_a_scoped_session_resolves_to_the_session_current_in_its_scope(
    scoped: scoped_session[Session],
) -> None:
    assert not scoped.registry.has()
    session = sync_session_of(scoped, "test")
    assert scoped.registry.has()  # created on first use, as calling the proxy does
    assert session is scoped()
    assert sync_session_of(scoped, "test") is session  # and the same one afterwards


def test_commit_through_a_scoped_session_writes_every_row(
    scoped: scoped_session[Session], engine: sa.Engine
) -> None:
    saga_id = unit_of_work(scoped, 1)  # the proxy itself, never scoped()
    assert [row["id"] for row in pending_rows(scoped(), sagas)] == [saga_id]
    scoped.commit()
    assert counts(engine) == (1, 1, 2)
    with engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    assert row.name == "session-bound-order"
    assert row.context == {"order_id": 1}


def test_rollback_through_a_scoped_session_leaves_nothing_even_when_reused(
    scoped: scoped_session[Session], engine: sa.Engine
) -> None:
    unit_of_work(scoped, 1)
    scoped.flush()  # written inside the transaction...
    scoped.rollback()  # ...and undone with it
    unit_of_work(scoped, 2)
    scoped.rollback()  # queued, never written
    scoped.add(Order(id=3, total=1))
    scoped.commit()  # the reused session commits only its own new work
    assert counts(engine) == (1, 0, 0)


def test_removing_the_scope_discards_what_was_not_committed(
    scoped: scoped_session[Session], engine: sa.Engine
) -> None:
    unit_of_work(scoped, 1)
    scoped.flush()
    scoped.remove()  # what Flask-SQLAlchemy does when the app context ends
    unit_of_work(scoped, 2)  # a new session in the same scope
    scoped.commit()
    assert counts(engine) == (1, 1, 2)


def test_each_thread_writes_through_its_own_scoped_session(
    scoped: scoped_session[Session], engine: sa.Engine
) -> None:
    sessions: dict[int, Session] = {}
    errors: list[BaseException] = []

    def request(order_id: int, commit: bool) -> None:
        try:
            unit_of_work(scoped, order_id)
            sessions[order_id] = scoped()
            if commit:
                scoped.commit()
            else:
                scoped.rollback()
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)
        finally:
            scoped.remove()

    # one after another: SQLite allows a single writer at a time
    for order_id, commit in ((1, True), (2, False), (3, True)):
        thread = threading.Thread(target=request, args=(order_id, commit))
        thread.start()
        thread.join()
    assert errors == []
    assert len({id(session) for session in sessions.values()}) == 3
    assert counts(engine) == (2, 2, 4)


async def test_an_async_scoped_session_commits_and_rolls_back(
    aengine: AsyncEngine, db: DatabaseUrls
) -> None:
    scoped = async_scoped_session(make_async_sessions(aengine), scopefunc=asyncio.current_task)
    try:
        unit_of_work(scoped, 1)
        assert isinstance(scoped(), AsyncSession)
        await scoped.commit()
        unit_of_work(scoped, 2)
        await scoped.flush()
        await scoped.rollback()
    finally:
        await scoped.remove()
    sync = db.sync_engine()
    try:
        assert counts(sync) == (1, 1, 2)
    finally:
        sync.dispose()


def test_a_session_factory_or_an_engine_is_refused(engine: sa.Engine) -> None:
    for wrong, name in ((make_sessions(engine), "sessionmaker"), (engine, "Engine")):
        with pytest.raises(
            TypeError, match=rf"^start_saga needs a SQLAlchemy Session.*got {name}$"
        ):
            start_saga(wrong, OrderSaga, {})  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=rf"^outbox\.add needs a SQLAlchemy Session.*got {name}$"
        ):
            outbox.add(wrong, "t", {})  # type: ignore[arg-type]
