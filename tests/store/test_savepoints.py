"""Savepoints (DESIGN rule 1): rows queued before a savepoint survive its rollback, whatever
a flush inside it wrote; rows queued inside it die with it; at any depth. Through a plain
`Session`, an `AsyncSession` and Flask-SQLAlchemy's ``db.session``, on PostgreSQL and
SQLite."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, scoped_session

from sagaz import Saga, action, outbox, start_saga
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from tests.conftest import DatabaseUrls


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "sp_items"
    id: Mapped[int] = mapped_column(primary_key=True)


class SavepointSaga(Saga):
    saga_name = "savepoint-saga"

    @action("only")
    async def only(self, ctx: Any) -> None:
        return None


def committed(engine: sa.Engine) -> tuple[list[int], list[int], list[str]]:
    """(item ids, saga contexts' "n", event topics) committed, sorted."""
    with engine.connect() as connection:
        items = sorted(connection.scalars(sa.select(Item.id)))
        contexts = sorted(c["n"] for c in connection.scalars(sa.select(sagas.c.context)))
        topics = sorted(connection.scalars(sa.select(outbox_table.c.topic)))
    return items, contexts, topics


def outer_rows_inner_flush_inner_rollback(session: Session) -> None:
    session.add(Item(id=1))
    session.flush()  # nothing pending: begin_nested() flushes nothing before SAVEPOINT
    start_saga(session, SavepointSaga, {"n": 1})
    outbox.add(session, "kept.outer", {"n": 1})
    savepoint = session.begin_nested()
    session.add(Item(id=2))
    session.flush()  # writes the outer rows too - inside the savepoint
    savepoint.rollback()


OUTER = ([1, 7], [1], ["kept.outer"])


def get_or_create(session: Session) -> None:
    """The get-or-create idiom: an INSERT in a savepoint that hits a unique key, the
    IntegrityError caught, the existing row read; here a first flush in the savepoint
    succeeded (and wrote sagaz's rows) before the conflicting one."""
    start_saga(session, SavepointSaga, {"n": 1})
    outbox.add(session, "kept.outer", {"n": 1})
    for ids in ([7], [8, 7]):  # the conflict first, then after a successful flush
        try:
            with session.begin_nested():
                outbox.add(session, "dropped.with-the-conflict", {})
                for item_id in ids:
                    session.add(Item(id=item_id))
                    session.flush()
        except IntegrityError:
            pass
    assert session.get(Item, 7) is not None
    session.add(Item(id=1))


GET_OR_CREATE = ([1, 7], [1], ["kept.outer"])


def rows_inside_a_rolled_back_savepoint(session: Session) -> None:
    session.add(Item(id=1))
    outbox.add(session, "kept.outer", {"n": 1})
    with session.begin_nested() as savepoint:
        start_saga(session, SavepointSaga, {"n": 2})
        outbox.add(session, "dropped.flushed", {})
        session.flush()
        with session.begin_nested():  # released into the savepoint, dies with it
            outbox.add(session, "dropped.released", {})
            session.add(Item(id=2))
        savepoint.rollback()
    with session.begin_nested() as queued_only:
        outbox.add(session, "dropped.queued", {})
        queued_only.rollback()
    with session.begin_nested():
        outbox.add(session, "kept.released", {})


INSIDE = ([1, 7], [], ["kept.outer", "kept.released"])


def three_levels(session: Session) -> None:
    outbox.add(session, "l0", {})
    level1 = session.begin_nested()
    outbox.add(session, "l1", {})
    level2 = session.begin_nested()
    start_saga(session, SavepointSaga, {"n": 2})
    outbox.add(session, "l2", {})
    level3 = session.begin_nested()
    outbox.add(session, "l3", {})
    session.add(Item(id=3))
    session.flush()  # l0..l3 written inside level 3
    level3.rollback()  # l3 gone; l0, l1, l2 queued again
    session.add(Item(id=2))
    session.flush()  # l0, l1, l2 written inside level 2
    level2.rollback()  # l2 gone; l0, l1 queued again
    level1.commit()  # released
    inner = session.begin_nested()
    outbox.add(session, "dropped", {})
    session.add(Item(id=4))
    session.flush()
    deeper = session.begin_nested()
    outbox.add(session, "dropped.deeper", {})
    session.flush()
    deeper.commit()
    inner.rollback()  # a savepoint whose child was released: both die with it
    session.add(Item(id=1))


THREE_LEVELS = ([1, 7], [], ["l0", "l1"])


def written_in_a_released_savepoint(session: Session) -> None:
    """Outer rows written inside a savepoint that was released into another one: the
    rollback of the outer savepoint undoes the write, and the rows survive it."""
    start_saga(session, SavepointSaga, {"n": 1})
    outbox.add(session, "kept.outer", {})
    outer = session.begin_nested()
    with session.begin_nested():
        session.add(Item(id=2))
        session.flush()  # the outer rows are written here
    outer.rollback()
    session.add(Item(id=1))


RELEASED = ([1, 7], [1], ["kept.outer"])

SCENARIOS: list[tuple[Callable[[Session], None], tuple[list[int], list[int], list[str]]]] = [
    (outer_rows_inner_flush_inner_rollback, OUTER),
    (get_or_create, GET_OR_CREATE),
    (rows_inside_a_rolled_back_savepoint, INSIDE),
    (three_levels, THREE_LEVELS),
    (written_in_a_released_savepoint, RELEASED),
]
IDS = [scenario.__name__ for scenario, _ in SCENARIOS]


@pytest.fixture
def engine(sync_engine: sa.Engine) -> sa.Engine:
    Base.metadata.create_all(sync_engine)
    with Session(sync_engine) as session:
        session.add(Item(id=7))  # committed before every scenario: what get_or_create finds
        session.commit()
    return sync_engine


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS, ids=IDS)
def test_session(
    engine: sa.Engine,
    scenario: Callable[[Session], None],
    expected: tuple[list[int], list[int], list[str]],
) -> None:
    with Session(engine) as session:
        scenario(session)
        session.commit()
    assert committed(engine) == expected


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS, ids=IDS)
async def test_async_session(
    engine: sa.Engine,
    async_engine: AsyncEngine,
    scenario: Callable[[Session], None],
    expected: tuple[list[int], list[int], list[str]],
) -> None:
    """The same steps on an AsyncSession's sync_session, run in its greenlet on the async
    driver (asyncpg, aiosqlite) - what every awaited AsyncSession method does."""
    async with AsyncSession(async_engine) as session:
        await session.run_sync(scenario)
        await session.commit()
    assert committed(engine) == expected


async def test_async_session_awaited(engine: sa.Engine, async_engine: AsyncEngine) -> None:
    async with AsyncSession(async_engine) as session:
        session.add(Item(id=1))
        outbox.add(session, "kept.outer", {"n": 1})
        level1 = await session.begin_nested()
        start_saga(session, SavepointSaga, {"n": 1})
        level2 = await session.begin_nested()
        outbox.add(session, "dropped", {})
        session.add(Item(id=2))
        await session.flush()
        await level2.rollback()
        await level1.commit()
        try:
            async with session.begin_nested():
                session.add(Item(id=7))
                await session.flush()
        except IntegrityError:
            pass
        await session.commit()
    assert committed(engine) == ([1, 7], [1], ["kept.outer"])


@pytest.fixture
def flask_session(engine: sa.Engine, db: DatabaseUrls) -> Iterator[scoped_session[Session]]:
    flask_db = SQLAlchemy()
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = db.url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"poolclass": sa.NullPool}
    flask_db.init_app(app)
    with app.app_context():
        yield flask_db.session
        flask_db.session.remove()


@pytest.mark.parametrize(("scenario", "expected"), SCENARIOS, ids=IDS)
def test_flask_sqlalchemy_db_session(
    engine: sa.Engine,
    flask_session: scoped_session[Session],
    scenario: Callable[[Any], None],
    expected: tuple[list[int], list[int], list[str]],
) -> None:
    scenario(flask_session)  # the scoped_session proxy itself, as a Flask view uses it
    flask_session.commit()
    assert committed(engine) == expected
