"""The consumer inbox on real PostgreSQL and SQLite: a message is processed exactly once,
its inbox row commits with the handler's writes or not at all."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from sagaz.outbox.inbox import (
    MAX_CONSUMER_LENGTH,
    MAX_MESSAGE_ID_LENGTH,
    ConsumerInbox,
    InvalidInboxKeyError,
    is_processed,
    process_once,
    process_once_sync,
)
from sagaz.store.schema import inbox, metadata

app_metadata = sa.MetaData()
payments = sa.Table(
    "app_payments",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("message_id", sa.String(255), nullable=False),
)


class HandlerFailed(Exception):
    pass


@pytest.fixture
async def engine(async_engine: AsyncEngine) -> AsyncEngine:
    async with async_engine.begin() as connection:
        await connection.run_sync(app_metadata.create_all)
    return async_engine


@pytest.fixture
def sync_db(sync_engine: sa.Engine) -> sa.Engine:
    app_metadata.create_all(sync_engine)
    return sync_engine


async def counts(engine: AsyncEngine) -> tuple[int, int]:
    async with engine.connect() as connection:
        inbox_rows = await connection.scalar(sa.select(sa.func.count()).select_from(inbox))
        app_rows = await connection.scalar(sa.select(sa.func.count()).select_from(payments))
    return inbox_rows or 0, app_rows or 0


def sync_counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        inbox_rows = connection.scalar(sa.select(sa.func.count()).select_from(inbox))
        app_rows = connection.scalar(sa.select(sa.func.count()).select_from(payments))
    return inbox_rows or 0, app_rows or 0


async def test_first_delivery_runs_and_a_duplicate_is_skipped(engine: AsyncEngine) -> None:
    calls: list[str] = []

    async def handle(session: AsyncSession) -> None:
        calls.append("m-1")
        await session.execute(sa.insert(payments).values(message_id="m-1"))

    results = []
    for _ in range(3):
        async with AsyncSession(engine) as session, session.begin():
            results.append(await process_once(session, "billing", "m-1", lambda: handle(session)))
    assert results == [True, False, False]
    assert calls == ["m-1"]
    assert await counts(engine) == (1, 1)
    async with AsyncSession(engine) as session:
        assert await is_processed(session, "billing", "m-1")
        assert not await is_processed(session, "shipping", "m-1")


async def test_consumers_are_independent(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session, session.begin():
        assert await process_once(session, "billing", "m-1", lambda: None)
        assert await process_once(session, "shipping", "m-1", lambda: None)
        assert not await process_once(session, "billing", "m-1", lambda: None)
    assert await counts(engine) == (2, 0)


async def test_handler_failure_leaves_no_row_and_undoes_its_writes(engine: AsyncEngine) -> None:
    async def fail(session: AsyncSession) -> None:
        await session.execute(sa.insert(payments).values(message_id="m-1"))
        raise HandlerFailed("card declined")

    async with AsyncSession(engine) as session:
        await session.execute(sa.insert(payments).values(message_id="before"))
        with pytest.raises(HandlerFailed):
            await process_once(session, "billing", "m-1", lambda: fail(session))
        # Even a caller that commits anyway commits neither the inbox row nor the
        # handler's writes - only its own earlier work.
        await session.commit()
    assert await counts(engine) == (0, 1)

    async def succeed(session: AsyncSession) -> None:
        await session.execute(sa.insert(payments).values(message_id="m-1"))

    async with AsyncSession(engine) as session, session.begin():  # the redelivery
        assert await process_once(session, "billing", "m-1", lambda: succeed(session))
    assert await counts(engine) == (1, 2)


async def test_caller_rollback_means_not_processed(engine: AsyncEngine) -> None:
    async with AsyncSession(engine) as session:
        assert await process_once(
            session,
            "billing",
            "m-1",
            lambda: session.execute(sa.insert(payments).values(message_id="m-1")),
        )
        await session.rollback()
    assert await counts(engine) == (0, 0)
    async with AsyncSession(engine) as session, session.begin():
        assert await process_once(session, "billing", "m-1", lambda: None)
    assert await counts(engine) == (1, 0)


async def test_handler_with_orm_flush_error_is_contained(engine: AsyncEngine) -> None:
    """A handler whose own SQL fails (a constraint) leaves the caller's transaction usable."""

    async def violate(session: AsyncSession) -> None:
        await session.execute(sa.insert(payments).values(id=1, message_id="dup"))
        await session.execute(sa.insert(payments).values(id=1, message_id="dup"))

    async with AsyncSession(engine) as session:
        with pytest.raises(sa.exc.IntegrityError):
            await process_once(session, "billing", "m-1", lambda: violate(session))
        await session.execute(sa.insert(payments).values(id=2, message_id="after"))
        await session.commit()
    assert await counts(engine) == (0, 1)


async def test_concurrent_duplicate_deliveries_are_processed_once(engine: AsyncEngine) -> None:
    runs: list[int] = []

    async def deliver(copy: int) -> bool:
        async with AsyncSession(engine) as session, session.begin():

            async def handle() -> None:
                runs.append(copy)
                await session.execute(sa.insert(payments).values(message_id="m-1"))
                await asyncio.sleep(0.05)  # hold the transaction open while copies arrive

            return await process_once(session, "billing", "m-1", handle)

    results = await asyncio.gather(*(deliver(copy) for copy in range(5)))
    assert sorted(results) == [False, False, False, False, True]
    assert len(runs) == 1
    assert await counts(engine) == (1, 1)


async def test_concurrent_copies_after_a_failed_first_copy(engine: AsyncEngine) -> None:
    """The copy that claims first fails: a copy waiting behind it processes the message."""
    first_claimed = asyncio.Event()

    async def failing_copy() -> None:
        async with AsyncSession(engine) as session, session.begin():

            async def handle() -> None:
                first_claimed.set()
                await asyncio.sleep(0.1)
                raise HandlerFailed("first copy fails")

            await process_once(session, "billing", "m-1", handle)

    async def later_copy() -> bool:
        await first_claimed.wait()
        async with AsyncSession(engine) as session, session.begin():
            return await process_once(
                session,
                "billing",
                "m-1",
                lambda: session.execute(sa.insert(payments).values(message_id="m-1")),
            )

    failed, processed = await asyncio.gather(failing_copy(), later_copy(), return_exceptions=True)
    assert isinstance(failed, HandlerFailed)
    assert processed is True
    assert await counts(engine) == (1, 1)


async def test_consumer_inbox_owns_the_transaction(engine: AsyncEngine) -> None:
    consumer = ConsumerInbox("billing", async_sessionmaker(engine))

    async def handle(session: AsyncSession) -> None:
        await session.execute(sa.insert(payments).values(message_id="m-1"))

    assert await consumer.process("m-1", handle) is True
    assert await consumer.process("m-1", handle) is False
    assert await consumer.is_processed("m-1")

    async def fail(session: AsyncSession) -> None:
        await session.execute(sa.insert(payments).values(message_id="m-2"))
        raise HandlerFailed("nope")

    with pytest.raises(HandlerFailed):
        await consumer.process("m-2", fail)
    assert not await consumer.is_processed("m-2")
    assert await counts(engine) == (1, 1)


def test_sync_twin(sync_db: sa.Engine) -> None:
    def handle(session: Session, message_id: str) -> None:
        session.execute(sa.insert(payments).values(message_id=message_id))

    with Session(sync_db) as session, session.begin():
        assert process_once_sync(session, "billing", "m-1", lambda: handle(session, "m-1"))
    with Session(sync_db) as session, session.begin():
        assert not process_once_sync(session, "billing", "m-1", lambda: handle(session, "m-1"))

    def fail() -> None:
        raise HandlerFailed("boom")

    with Session(sync_db) as session:
        with pytest.raises(HandlerFailed):
            process_once_sync(session, "billing", "m-2", lambda: (handle(session, "m-2"), fail()))
        session.commit()
    assert sync_counts(sync_db) == (1, 1)


@pytest.mark.parametrize(
    ("consumer", "message_id", "match"),
    [
        ("", "m", "consumer must be 1 to"),
        ("c" * (MAX_CONSUMER_LENGTH + 1), "m", f"consumer must be 1 to {MAX_CONSUMER_LENGTH}"),
        ("billing", "", "message_id must be 1 to"),
        ("billing", "m" * (MAX_MESSAGE_ID_LENGTH + 1), "message_id must be 1 to 255"),
        ("billing", b"m-1", "message_id must be a str, got bytes"),
        (None, "m-1", "consumer must be a str, got NoneType"),
        ("billing", "m\x00", "message_id contains control characters"),
    ],
)
async def test_bad_keys_are_refused_before_anything_is_written(
    engine: AsyncEngine, consumer: object, message_id: object, match: str
) -> None:
    called: list[bool] = []
    async with AsyncSession(engine) as session:
        with pytest.raises(InvalidInboxKeyError, match=match):
            await process_once(session, consumer, message_id, lambda: called.append(True))  # type: ignore[arg-type]
        assert not session.in_transaction()
    assert called == []
    assert await counts(engine) == (0, 0)


def test_max_lengths_match_the_schema() -> None:
    assert (MAX_CONSUMER_LENGTH, MAX_MESSAGE_ID_LENGTH) == (200, 255)


@pytest.fixture
def plain_sqlite(tmp_path: Path) -> Iterator[sa.Engine]:
    """SQLite through an engine sagaz did not configure: pysqlite's default transaction
    handling, where a SAVEPOINT opening a transaction would commit on release."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    metadata.create_all(engine)
    app_metadata.create_all(engine)
    yield engine
    engine.dispose()


def test_plain_pysqlite_engine_keeps_the_promise(plain_sqlite: sa.Engine) -> None:
    with Session(plain_sqlite) as session:
        assert process_once_sync(
            session,
            "billing",
            "m-1",
            lambda: session.execute(sa.insert(payments).values(message_id="m-1")),
        )
        session.rollback()
    assert sync_counts(plain_sqlite) == (0, 0)


@pytest.fixture
async def plain_aiosqlite(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    from sqlalchemy.ext.asyncio import create_async_engine

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'plain.db'}")
    async with engine.begin() as connection:
        await connection.run_sync(metadata.create_all)
        await connection.run_sync(app_metadata.create_all)
    yield engine
    await engine.dispose()


async def test_plain_aiosqlite_engine_keeps_the_promise(plain_aiosqlite: AsyncEngine) -> None:
    async with AsyncSession(plain_aiosqlite) as session:
        assert await process_once(
            session,
            "billing",
            "m-1",
            lambda: session.execute(sa.insert(payments).values(message_id="m-1")),
        )
        await session.rollback()
    assert await counts(plain_aiosqlite) == (0, 0)
