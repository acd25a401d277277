"""Claims: per-key heads and followers, expiry after a crash, renewal, fenced marks."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox import claims
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.claims import Failure
from sagaz.outbox.relay import OutboxRelay, PassResult
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually, rows


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


def claim(engine: sa.Engine, owner: str, *, limit: int = 100, seconds: float = 30.0) -> list[int]:
    now = datetime.now(UTC)
    with engine.begin() as connection:
        events = claims.claim_batch(
            connection,
            owner=owner,
            limit=limit,
            now=now,
            expires=now + timedelta(seconds=seconds),
        )
    return [event.seq for event in events]


def test_a_key_is_claimed_from_its_first_pending_event_only(engine: sa.Engine) -> None:
    # seq:              1    2    3     4    5    6
    add_events(engine, [("t", i, key) for i, key in enumerate(["a", "b", None, "a", "b", "a"])])
    assert claim(engine, "one", limit=3) == [1, 2, 3]
    # a and b have a pending (claimed) earlier event: only unkeyed events are free.
    assert claim(engine, "two") == []
    with engine.begin() as connection:
        assert claims.mark_published(connection, owner="one", seqs=[1], now=datetime.now(UTC))
    # 4 is a's head now; its follower 6 comes along. b still waits for 2.
    assert claim(engine, "two") == [4, 6]


def test_followers_stop_at_the_first_event_that_is_not_ready(engine: sa.Engine) -> None:
    add_events(engine, [("t", i, "a") for i in range(4)])
    assert claim(engine, "one", limit=1) == [1]
    with engine.begin() as connection:
        # Event 3 backs off (as if it had failed before); 1 is published.
        later = datetime.now(UTC) + timedelta(minutes=5)
        connection.execute(
            sa.text("UPDATE sagaz_outbox SET next_attempt_at = :at WHERE seq = 3"), {"at": later}
        )
        claims.mark_published(connection, owner="one", seqs=[1], now=datetime.now(UTC))
    assert claim(engine, "two") == [2]
    assert claim(engine, "three") == []


def test_heads_fill_the_batch_before_followers(engine: sa.Engine) -> None:
    # seq:              1    2    3    4    5
    add_events(engine, [("t", i, key) for i, key in enumerate(["a", "a", "a", "b", "b"])])
    assert claim(engine, "one", limit=2) == [1, 4]
    assert claim(engine, "two") == []
    with engine.begin() as connection:
        claims.mark_published(connection, owner="one", seqs=[1, 4], now=datetime.now(UTC))
    # Room left after the heads (2 and 5) goes to followers, cut in seq order.
    assert claim(engine, "two", limit=3) == [2, 3, 5]


async def test_claims_of_a_crashed_relay_expire_and_are_reclaimed(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(engine, [("t", {"i": i}, "k") for i in range(3)])
    # A relay claimed the batch and died before publishing or marking it.
    assert claim(engine, "crashed", seconds=1.0) == [1, 2, 3]
    broker = InMemoryBroker()
    relay = OutboxRelay(async_engine, broker, claim_seconds=1.0, listen=False)
    assert await relay.relay_once() == PassResult()

    async def reclaimed() -> bool:
        return (await relay.relay_once()).published == 3

    await eventually(reclaimed, within=10)
    assert broker.ids() == ids
    assert {row.claim_owner for row in rows(engine)} == {None}


def test_marks_are_fenced_by_the_claim_owner(engine: sa.Engine) -> None:
    add_events(engine, [("t", {"i": i}, None) for i in range(2)])
    assert claim(engine, "slow", seconds=0.001) == [1, 2]
    # The slow relay's claim expired; another relay took the events over.
    assert claim(engine, "next") == [1, 2]
    now = datetime.now(UTC)
    with engine.begin() as connection:
        assert claims.mark_published(connection, owner="slow", seqs=[1, 2], now=now) == set()
        settled = claims.settle_failures(
            connection,
            owner="slow",
            failures=[Failure(2, True, now + timedelta(minutes=1), "late")],
            max_attempts=1,
        )
        assert settled == claims.Settled(frozenset(), frozenset())
        assert claims.renew_claims(connection, owner="slow", seqs=[1], expires=now) == set()
    assert [(row.status, row.claim_owner, row.attempts) for row in rows(engine)] == [
        ("pending", "next", 0),
        ("pending", "next", 0),
    ]
    with engine.begin() as connection:
        assert claims.mark_published(connection, owner="next", seqs=[1, 2], now=now) == {1, 2}
        # Marking twice changes nothing.
        assert claims.mark_published(connection, owner="next", seqs=[1, 2], now=now) == set()


async def test_claims_are_renewed_while_a_slow_broker_publishes(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(engine, [("t", {"i": 0}, "k")])
    slow = InMemoryBroker(delay=1.5)
    relay = OutboxRelay(async_engine, slow, claim_seconds=0.6, listen=False)
    rival = OutboxRelay(async_engine, InMemoryBroker(), claim_seconds=0.6, listen=False)
    publishing = asyncio.create_task(relay.relay_once())
    await eventually(lambda: slow.batches > 0)
    for _ in range(10):
        assert await rival.relay_once() == PassResult()
        await asyncio.sleep(0.1)
    assert await publishing == PassResult(claimed=1, published=1)
    assert slow.ids() == ids


def test_claim_limit_must_be_positive(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="limit"):
        claim(engine, "x", limit=0)
