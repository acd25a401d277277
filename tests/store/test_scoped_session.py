"""start_saga and outbox.add take a `scoped_session` (Flask-SQLAlchemy's ``db.session`` is
one) or an `async_scoped_session` as they take a Session: the rows go to the session
current in the scope and commit or roll back with it - on real PostgreSQL and SQLite."""

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

from sagaz import Saga, action, outbox, start_saga
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from sagaz.store.unit_of_work import pending_rows, sync_session_of


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "scoped_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    total: Mapped[int]


class ScopedOrderSaga(Saga):
    saga_name = "scoped-session-order"

    @action("reserve")
    async def reserve(self, ctx: Any) -> None:
        return None


@pytest.fixture
def scoped(sync_engine: sa.Engine) -> Iterator[scoped_session[Session]]:
    Base.metadata.create_all(sync_engine)
    registry = scoped_session(make_sessions(sync_engine))
    yield registry
    registry.remove()


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(Order.__table__)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) or 0,
        )


def unit_of_work(session: Any, order_id: int) -> str:
    """What a view does with ``db.session``: the proxy itself, never ``db.session()``."""
    session.add(Order(id=order_id, total=42))
    saga_id = start_saga(session, ScopedOrderSaga, {"order_id": order_id})
    outbox.add(session, "orders.created", {"order_id": order_id}, key=str(order_id))
    return saga_id


def test_the_proxy_resolves_to_the_session_current_in_its_scope(
    scoped: scoped_session[Session],
) -> None:
    assert not scoped.registry.has()
    session = sync_session_of(scoped, "test")
    assert scoped.registry.has()  # created on first use, as calling the proxy does
    assert session is scoped()
    assert sync_session_of(scoped, "test") is session  # and the same one afterwards


def test_commit_through_the_proxy_writes_every_row(
    scoped: scoped_session[Session], sync_engine: sa.Engine
) -> None:
    saga_id = unit_of_work(scoped, 1)
    assert [row["id"] for row in pending_rows(scoped(), sagas)] == [saga_id]
    scoped.commit()
    assert counts(sync_engine) == (1, 1, 1)
    with sync_engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    assert row.name == "scoped-session-order"
    assert row.context == {"order_id": 1}


def test_rollback_through_the_proxy_leaves_nothing_even_when_reused(
    scoped: scoped_session[Session], sync_engine: sa.Engine
) -> None:
    unit_of_work(scoped, 1)
    scoped.flush()  # written inside the transaction...
    scoped.rollback()  # ...and undone with it
    unit_of_work(scoped, 2)
    scoped.rollback()  # queued, never written
    scoped.add(Order(id=3, total=1))
    scoped.commit()  # the reused session commits only its own new work
    assert counts(sync_engine) == (1, 0, 0)


def test_removing_the_scope_discards_what_was_not_committed(
    scoped: scoped_session[Session], sync_engine: sa.Engine
) -> None:
    unit_of_work(scoped, 1)
    scoped.flush()
    scoped.remove()  # what Flask-SQLAlchemy does when the app context ends
    unit_of_work(scoped, 2)  # a new session in the same scope
    scoped.commit()
    assert counts(sync_engine) == (1, 1, 1)


def test_each_thread_writes_through_its_own_session(
    scoped: scoped_session[Session], sync_engine: sa.Engine
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
    assert counts(sync_engine) == (2, 2, 2)


async def test_an_async_scoped_session_commits_and_rolls_back(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    async with async_engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    scoped = async_scoped_session(make_async_sessions(async_engine), scopefunc=asyncio.current_task)
    try:
        unit_of_work(scoped, 1)
        assert isinstance(scoped(), AsyncSession)
        await scoped.commit()
        unit_of_work(scoped, 2)
        await scoped.flush()
        await scoped.rollback()
    finally:
        await scoped.remove()
    assert counts(sync_engine) == (1, 1, 1)


def test_a_session_factory_or_an_engine_is_refused(sync_engine: sa.Engine) -> None:
    for wrong, name in ((make_sessions(sync_engine), "sessionmaker"), (sync_engine, "Engine")):
        with pytest.raises(
            TypeError, match=rf"^start_saga needs a SQLAlchemy Session.*got {name}$"
        ):
            start_saga(wrong, ScopedOrderSaga, {})  # type: ignore[arg-type]
        with pytest.raises(
            TypeError, match=rf"^outbox\.add needs a SQLAlchemy Session.*got {name}$"
        ):
            outbox.add(wrong, "t", {})  # type: ignore[arg-type]
