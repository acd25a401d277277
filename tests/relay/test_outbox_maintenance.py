"""Health counts and retention, through every kind of bind."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.maintenance import (
    OutboxHealth,
    RetentionResult,
    apply_retention,
    list_dead,
    outbox_health,
)
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import inbox
from sagaz.store.schema import outbox as outbox_table
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, rows


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


def set_rows(engine: sa.Engine, seqs: list[int], **values: object) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox_table).where(outbox_table.c.seq.in_(seqs)).values(**values)
        )


async def test_health_counts_pending_dead_and_the_oldest_pending_age(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    empty = OutboxHealth(pending=0, dead=0, oldest_pending_age=None)
    assert outbox_health(engine) == empty
    assert await outbox_health(async_engine) == empty
    add_events(engine, [("t", i, None) for i in range(5)])
    now = datetime.now(UTC)
    set_rows(engine, [1], created_at=now - timedelta(seconds=90))
    set_rows(engine, [2], status="dead")
    set_rows(engine, [3], status="published", published_at=now)

    health = outbox_health(engine, now=now)
    assert (health.pending, health.dead) == (3, 1)
    assert health.oldest_pending_age == pytest.approx(90, abs=0.01)
    assert health.as_dict() == {
        "pending": 3,
        "dead": 1,
        "oldest_pending_age_seconds": health.oldest_pending_age,
    }
    with engine.connect() as connection:
        assert outbox_health(connection, now=now) == health
    async with async_engine.connect() as async_connection:
        assert await outbox_health(async_connection, now=now) == health
        assert [event.seq for event in await list_dead(async_connection)] == [2]


def add_inbox(engine: sa.Engine, ages: list[float]) -> None:
    now = datetime.now(UTC)
    with engine.begin() as connection:
        connection.execute(
            sa.insert(inbox),
            [
                {"consumer": "c", "message_id": str(i), "received_at": now - timedelta(days=age)}
                for i, age in enumerate(ages)
            ],
        )


def inbox_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.scalars(sa.select(inbox.c.message_id)))


async def test_retention_deletes_only_old_published_events_and_old_inbox_rows(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    add_events(engine, [("t", i, None) for i in range(8)])
    old = datetime.now(UTC) - timedelta(days=10)
    set_rows(engine, [1, 2, 3, 4, 5], status="published", published_at=old)
    set_rows(engine, [6], status="published", published_at=datetime.now(UTC))
    set_rows(engine, [7], status="dead", created_at=old)
    set_rows(engine, [8], created_at=old)  # pending
    add_inbox(engine, [30, 20, 10, 1, 0])

    # In bounded batches: two per table at most here, two rows each.
    result = apply_retention(
        engine,
        published_retention=timedelta(days=7),
        inbox_retention=timedelta(days=14),
        batch_size=2,
        max_batches=2,
    )
    assert result == RetentionResult(published=4, inbox=2)
    assert [row.seq for row in rows(engine)] == [5, 6, 7, 8]
    assert inbox_ids(engine) == ["2", "3", "4"]

    assert await apply_retention(
        async_engine, published_retention=timedelta(days=7), inbox_retention=None, batch_size=2
    ) == RetentionResult(published=1, inbox=0)
    with engine.begin() as connection:
        assert apply_retention(
            connection, published_retention=None, inbox_retention=timedelta(days=5)
        ) == RetentionResult(published=0, inbox=1)
    assert [row.seq for row in rows(engine)] == [6, 7, 8]
    assert inbox_ids(engine) == ["3", "4"]


async def test_the_relay_applies_retention(engine: sa.Engine, async_engine: AsyncEngine) -> None:
    add_events(engine, [("t", i, None) for i in range(3)])
    relay = OutboxRelay(
        async_engine,
        InMemoryBroker(),
        published_retention=timedelta(0),
        inbox_retention=timedelta(days=1),
        retention_batch_size=2,
        listen=False,
    )
    assert (await relay.relay_once()).published == 3
    add_inbox(engine, [2, 0])
    assert await relay.apply_retention() == RetentionResult(published=3, inbox=1)
    assert rows(engine) == []


def test_bad_arguments_are_refused(engine: sa.Engine) -> None:
    with pytest.raises(TypeError, match="expected a SQLAlchemy"):
        outbox_health("sqlite://")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="batch_size"):
        apply_retention(engine, published_retention=None, inbox_retention=None, batch_size=0)
    with pytest.raises(ValueError, match="limit"):
        list_dead(engine, limit=0)
