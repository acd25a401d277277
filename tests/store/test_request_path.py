"""What start_saga + outbox.add cost a request (DESIGN: at most one round trip for all of
sagaz's rows of a flush, statements compiled once), and that the one-statement write
stores values exactly as the columns' types do - on PostgreSQL (psycopg and asyncpg) and
SQLite (pysqlite and aiosqlite). Counted with SQLAlchemy's statement events, never timed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz import outbox, start_saga
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from sagaz.store.wakeup import WAKEUP_KEY, WAKEUP_MODES
from tests.conftest import DatabaseUrls
from tests.store import test_session_bound as session_bound

# The application's model, saga and engine fixtures are test_session_bound's.
Base = session_bound.Base
Purchase = session_bound.Order
PurchaseSaga = session_bound.OrderSaga
engine = session_bound.engine
aengine = session_bound.aengine


@contextmanager
def statements(engine: sa.Engine) -> Iterator[list[tuple[str, Any]]]:
    """(SQL, cache statistic) of every statement `engine` sends while inside."""
    seen: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, _p: Any, context: Any, _m: Any) -> None:
        seen.append((statement, getattr(context, "cache_hit", None)))

    sa.event.listen(engine, "before_cursor_execute", capture)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", capture)


def a_request(session: Any, n: int, *, with_sagaz: bool, sagas_: int = 1, events: int = 1) -> None:
    session.add(Purchase(id=n, total=n))
    for i in range(sagas_ if with_sagaz else 0):
        start_saga(session, PurchaseSaga, {"n": n, "i": i})
    for i in range(events if with_sagaz else 0):
        outbox.add(session, "purchases.created", {"n": n, "i": i}, key=str(n))


def sagaz_statements(seen: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    return [(sql, hit) for sql, hit in seen if "sagaz_" in sql]


def requests(engine: sa.Engine, shapes: list[tuple[int, int]]) -> list[list[Any]]:
    """One request per (sagas, events) shape; the cache statistic of each one's sagaz
    statements."""
    hits = []
    for sagas_, events in shapes:
        with statements(engine) as seen, Session(engine) as session:
            a_request(session, len(hits) + 1, with_sagaz=True, sagas_=sagas_, events=events)
            session.commit()
        hits.append([hit for _sql, hit in sagaz_statements(seen)])
    return hits


def test_the_sagaz_statements_are_compiled_once(engine: sa.Engine) -> None:
    """Requests after the first are served from SQLAlchemy's compiled cache, whatever
    their row counts: no statement built with per-call literals or shapes. (SQLite
    compiles an executemany apart from a single-row execute: one more entry, once.)"""
    hits = requests(engine, [(1, 1), (3, 5), (1, 1), (2, 2), (3, 5), (1, 1)])
    assert set(hits[0]) == {CacheStats.CACHE_MISS}
    warm = 1 if engine.dialect.name == "postgresql" else 2
    assert all(h == [CacheStats.CACHE_HIT] * len(hits[0]) for h in hits[warm:])


async def test_the_sagaz_statements_are_compiled_once_for_an_async_session(
    aengine: AsyncEngine,
) -> None:
    hits = []
    for n in (1, 1, 1):
        with statements(aengine.sync_engine) as seen:
            async with AsyncSession(aengine) as session:
                a_request(session, len(hits) + 1, with_sagaz=True, sagas_=n, events=n)
                await session.commit()
        hits.append([hit for _sql, hit in sagaz_statements(seen)])
    assert set(hits[0]) == {CacheStats.CACHE_MISS}
    assert hits[1] == hits[2] == [CacheStats.CACHE_HIT] * len(hits[0])


@pytest.mark.parametrize("mode", WAKEUP_MODES)
def test_a_saga_and_an_event_add_one_round_trip(engine: sa.Engine, mode: str) -> None:
    """PostgreSQL: one statement for every sagaz row of the flush (sagas and events, in
    each wake-up mode); SQLite, where there is no network: one executemany per table."""
    with statements(engine) as baseline, Session(engine) as session:
        a_request(session, 1, with_sagaz=False)
        session.commit()
    with statements(engine) as with_sagaz, Session(engine, info={WAKEUP_KEY: mode}) as session:
        a_request(session, 2, with_sagaz=True, sagas_=3, events=5)
        session.commit()
    added = len(with_sagaz) - len(baseline)
    ours = sagaz_statements(with_sagaz)
    if engine.dialect.name == "postgresql":
        assert added == 1
        assert len(ours) == 1
        assert "INSERT INTO sagaz_sagas" in ours[0][0]
        assert "INSERT INTO sagaz_outbox" in ours[0][0]
        # the NOTIFY rides in the statement only in "transaction" mode
        assert ("pg_notify" in ours[0][0]) == (mode == "transaction")
    else:
        assert added == 2
        assert sorted(sql.split("(")[0] for sql, _hit in ours) == [
            "INSERT INTO sagaz_outbox ",
            "INSERT INTO sagaz_sagas ",
        ]
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(sagas)) == 3
        assert connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) == 5


async def test_an_async_request_adds_one_round_trip_on_postgres(pg: DatabaseUrls) -> None:
    aengine = pg.async_engine()  # asyncpg
    async with aengine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    with statements(aengine.sync_engine) as baseline:
        async with AsyncSession(aengine) as session:
            a_request(session, 1, with_sagaz=False)
            await session.commit()
    with statements(aengine.sync_engine) as with_sagaz:
        async with AsyncSession(aengine) as session:
            a_request(session, 2, with_sagaz=True)
            await session.commit()
    await aengine.dispose()
    assert len(with_sagaz) - len(baseline) == 1


def test_events_keep_the_order_they_were_added_in(engine: sa.Engine) -> None:
    with Session(engine) as session:
        ids = [outbox.add(session, "t", {"n": n}, key="same") for n in range(50)]
        session.commit()
    with engine.connect() as connection:
        stored = list(connection.scalars(sa.select(outbox_table.c.id).order_by(outbox_table.c.seq)))
    assert stored == ids


NUMBERS = {"negative_zero": -0.0, "big": 1e16, "tiny": 1.5e-7, "long": 10**30, "pi": math.pi}


def alter_json_columns(engine: sa.Engine, column_type: str) -> None:
    with engine.begin() as connection:
        for table, column in (("sagaz_sagas", "context"), ("sagaz_outbox", "payload")):
            connection.execute(
                sa.text(
                    f"ALTER TABLE {table} ALTER COLUMN {column} TYPE {column_type} "
                    f"USING {column}::{column_type}"
                )
            )


def stored_documents(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        return [
            connection.scalar(sa.select(sagas.c.context)),
            connection.scalar(sa.select(outbox_table.c.payload)),
        ]


def assert_exactly(document: Any) -> None:
    assert document == NUMBERS
    assert math.copysign(1.0, document["negative_zero"]) == -1.0
    assert type(document["big"]) is float
    assert type(document["long"]) is int


def write_numbers(engine: sa.Engine) -> None:
    with Session(engine) as session:
        start_saga(session, PurchaseSaga, NUMBERS)
        outbox.add(session, "numbers", NUMBERS)
        session.commit()


def test_numbers_survive_exactly_in_json_text_columns(pg: DatabaseUrls) -> None:
    """A `json` column (text kept as written) gets -0.0 and 1e16 back exactly: the one
    statement hands every value to its column's own type, not through jsonb."""
    engine = pg.sync_engine()
    try:
        alter_json_columns(engine, "json")
        write_numbers(engine)
        for document in stored_documents(engine):
            assert_exactly(document)
    finally:
        engine.dispose()


def test_numbers_in_jsonb_columns_are_what_jsonb_makes_of_them(pg: DatabaseUrls) -> None:
    engine = pg.sync_engine()
    try:
        write_numbers(engine)
        with engine.connect() as connection:
            expected = connection.scalar(
                sa.select(
                    sa.cast(sa.literal(json.dumps(NUMBERS)), sa.Text).cast(sagas.c.context.type)
                )
            )
        assert stored_documents(engine) == [expected, expected]
    finally:
        engine.dispose()


def test_numbers_survive_exactly_on_sqlite(sqlite: DatabaseUrls) -> None:
    engine = sqlite.sync_engine()
    try:
        write_numbers(engine)
        for document in stored_documents(engine):
            assert_exactly(document)
    finally:
        engine.dispose()


def test_a_table_with_a_schema_is_written_there(pg: DatabaseUrls) -> None:
    """The statement names the table with its schema (here: a copy of sagaz_outbox bound
    to the test's schema, written through a connection whose search_path is elsewhere)."""
    from sagaz.outbox.events import build_event_row
    from sagaz.store.statements import OUTBOX_CHANNEL, postgres_insert_groups, rows_document

    qualified = outbox_table.to_metadata(sa.MetaData(), schema=pg.schema)
    row = build_event_row("t", {"n": 1})
    statement = postgres_insert_groups(((qualified, tuple(row), OUTBOX_CHANNEL),), notify=False)
    engine = sa.create_engine(pg.sync, poolclass=sa.NullPool)  # search_path: public
    try:
        with engine.begin() as connection:
            assert connection.scalar(sa.text("SELECT current_schema()")) == "public"
            assert connection.execute(statement, {"rows0": rows_document([row])}).scalar()
            stored = connection.scalar(sa.select(qualified.c.id))
    finally:
        engine.dispose()
    assert stored == row["id"]
