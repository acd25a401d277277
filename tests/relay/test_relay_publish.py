"""The relay publishes exactly the committed outbox events, with their ids, keys,
headers and payloads, on PostgreSQL and SQLite."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz import SagaContextManager, outbox
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay, PassResult
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, by_key, rows


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


async def test_committed_events_are_published_as_written(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    with SagaContextManager.scope("corr-1"):
        ids = add_events(
            engine,
            [("orders.created", {"n": 1}, "o-1"), ("orders.audit", [1, "x"], None)],
            headers={"tenant": "acme"},
        )
    async with AsyncSession(async_engine) as session:
        ids.append(outbox.add(session, "orders.paid", {"n": 2}, key="o-1"))
        await session.commit()
    broker = InMemoryBroker()
    relay = OutboxRelay(async_engine, broker, listen=False)

    result = await relay.relay_once()

    assert result == PassResult(claimed=3, published=3)
    assert broker.ids() == ids
    first, second, third = broker.published
    assert (first.topic, first.key, first.payload) == ("orders.created", "o-1", {"n": 1})
    assert first.headers == {"tenant": "acme", "correlation-id": "corr-1"}
    assert (second.topic, second.key, second.payload) == ("orders.audit", None, [1, "x"])
    assert (third.topic, third.key, third.headers) == ("orders.paid", "o-1", {})
    assert first.created_at is not None
    assert first.created_at.tzinfo is not None
    assert [row.status for row in rows(engine)] == ["published"] * 3
    assert all(row.claim_owner is None and row.published_at for row in rows(engine))
    assert await relay.relay_once() == PassResult()
    assert len(broker.published) == 3


async def test_rolled_back_events_are_never_published(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    with Session(engine) as session:
        outbox.add(session, "t.rolled-back", {"n": 1})
        session.flush()
        session.rollback()
    with Session(engine) as session:
        with session.begin_nested() as savepoint:
            outbox.add(session, "t.savepoint", {"n": 2})
            savepoint.rollback()
        kept = outbox.add(session, "t.kept", {"n": 3})
        session.commit()
    with Session(engine) as session:
        outbox.add(session, "t.never-committed", {"n": 4})
        session.flush()
        broker = InMemoryBroker()
        # The flushed row is invisible to the relay while the transaction is open.
        assert await OutboxRelay(async_engine, broker, listen=False).relay_once() == PassResult(
            claimed=1, published=1
        )
    assert broker.ids() == [kept]
    assert [row.topic for row in rows(engine)] == ["t.kept"]


async def test_batches_are_bounded_and_keys_keep_their_order(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(engine, [("t", i, None if i % 2 else f"k{i % 3}") for i in range(25)])
    broker = InMemoryBroker()
    relay = OutboxRelay(async_engine, broker, batch_size=10, listen=False)
    claimed = [(await relay.relay_once()).claimed for _ in range(4)]
    assert claimed == [10, 10, 5, 0]
    assert sorted(broker.ids()) == sorted(ids)
    assert broker.batches == 3
    for key, payloads in by_key(broker).items():
        assert payloads == sorted(payloads), key


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("batch_size", 0),
        ("concurrency", 0),
        ("max_attempts", 0),
        ("claim_seconds", 0),
        ("poll_interval", -1),
        ("base_backoff", -1),
        ("max_backoff", 0.5),
    ],
)
def test_bad_options_are_refused(async_engine: AsyncEngine, option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option.split("_")[0]):
        OutboxRelay(async_engine, InMemoryBroker(), **{option: value})  # type: ignore[arg-type]
