"""A broker outage is not the events' fault: it counts no attempt (an outage of any
length dead-letters nothing), the relay pauses instead of hammering the broker, and the
backlog flows within `max_connection_backoff` of the broker's return. A lost connection
in a batch the broker partly confirmed counts, but waits at most `max_connection_backoff`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox.brokers.common import (
    BrokerConnectionError,
    EarlierMessageFailedError,
    PublishError,
)
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay, PassResult
from sagaz.outbox.relay_pass import is_outage
from sagaz.store.operations import as_utc
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually, rows

LOST = BrokerConnectionError("in-memory broker: connection refused (injected)")


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


def test_an_outage_is_a_batch_the_broker_confirmed_nothing_of_for_lost_connections() -> None:
    held_back = EarlierMessageFailedError("k", "e-1")
    assert is_outage([LOST, LOST])
    assert is_outage([LOST, held_back])
    assert is_outage([ConnectionResetError("reset")])
    assert not is_outage([])
    assert not is_outage([LOST, None])  # the broker confirmed one: it is reachable
    assert not is_outage([LOST, PublishError("refused")])  # a message's own failure
    assert not is_outage([held_back])  # nothing says the connection was lost


async def test_an_outage_counts_no_attempt_and_dead_letters_nothing(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    add_events(engine, [("t.a", {"n": n}, None) for n in range(3)])
    broker = InMemoryBroker()
    broker.fail_when(lambda _message: LOST)
    relay = OutboxRelay(async_engine, broker, max_attempts=1, listen=False)

    for _ in range(5):  # max_attempts=1: one counted failure would dead-letter them
        assert await relay.relay_once() == PassResult(claimed=3, released=3, outage=True)
    for row in rows(engine):
        assert (row.status, row.attempts, row.claim_owner) == ("pending", 0, None)
        assert row.last_error == f"BrokerConnectionError: {LOST}"
        assert as_utc(row.next_attempt_at) <= datetime.now(UTC)  # still due

    broker.reset_failures()
    assert await relay.relay_once() == PassResult(claimed=3, published=3)
    assert len(broker.published) == 3


async def test_the_relay_pauses_during_an_outage_and_resumes_soon_after_it(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    add_events(engine, [("t.a", {"n": n}, None) for n in range(3)])
    broker = InMemoryBroker()
    broker.fail_when(lambda _message: LOST)
    relay = OutboxRelay(
        async_engine,
        broker,
        base_backoff=0.2,
        max_connection_backoff=0.8,
        poll_interval=0.05,
        listen=False,
    )
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3:
            # New commits wake the relay; during an outage it keeps pausing anyway.
            await asyncio.to_thread(add_events, engine, [("t.b", {"wake": True}, None)])
            await asyncio.sleep(0.1)
        # Polling every 0.05 s would be ~60 batches; paused ones are a handful.
        assert 2 <= broker.batches <= 12, broker.batches
        broker.reset_failures()
        back = time.monotonic()

        async def all_published() -> bool:
            # Off the loop: a blocking read would stall the relay's own SQLite writes.
            current = await asyncio.to_thread(rows, engine)
            return all(row.status == "published" for row in current)

        await eventually(all_published)
        # Generous bound for a shared machine: the pause is at most 0.8 s.
        assert time.monotonic() - back < 5
        assert {row.attempts for row in rows(engine)} == {0}
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)


async def test_a_connection_lost_mid_batch_counts_but_waits_at_most_max_connection_backoff(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    add_events(engine, [("t.a", {"n": n}, None) for n in range(4)])
    broker = InMemoryBroker()
    broker.cut_connection_after(2)
    relay = OutboxRelay(
        async_engine, broker, base_backoff=10.0, max_backoff=300.0, max_connection_backoff=2.0,
        listen=False,
    )  # fmt: skip

    assert await relay.relay_once() == PassResult(claimed=4, published=2, retried=2)
    failed = [row for row in rows(engine) if row.status == "pending"]
    assert [row.attempts for row in failed] == [1, 1]
    for row in failed:
        delay = as_utc(row.next_attempt_at) - datetime.now(UTC)
        assert delay <= timedelta(seconds=2)


def test_max_connection_backoff_must_be_positive(async_engine: AsyncEngine) -> None:
    with pytest.raises(ValueError, match="max_connection_backoff"):
        OutboxRelay(async_engine, InMemoryBroker(), max_connection_backoff=0)
