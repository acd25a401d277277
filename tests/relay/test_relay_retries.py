"""Failed publishes back off (the next attempt time is stored), are dead-lettered after
max_attempts, can be re-queued; a failed keyed event holds back the rest of its key."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import backoff
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.maintenance import list_dead, outbox_health, requeue_dead
from sagaz.outbox.relay import OutboxRelay, PassResult
from sagaz.store.operations import as_utc
from sagaz.store.schema import outbox as outbox_table
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, by_key, failing, rows


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


def make_due(engine: sa.Engine) -> None:
    """Skip the stored backoff: every pending event is due now."""
    with engine.begin() as connection:
        connection.execute(
            sa.update(outbox_table)
            .where(outbox_table.c.status == "pending")
            .values(next_attempt_at=datetime.now(UTC) - timedelta(seconds=1))
        )


def test_backoff_is_exponential_capped_and_jittered() -> None:
    # after the first failure (attempts 0 -> 1) the ceiling is base_backoff, doubling after
    for attempts, ceiling in [(1, 1.0), (2, 2.0), (4, 8.0), (11, 60.0), (501, 60.0)]:
        delays = {backoff(attempts, 1.0, 60.0) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(delays) > 1


async def test_failures_back_off_then_dead_letter_then_requeue(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    [poison, fine] = add_events(engine, [("t.poison", {"n": 1}, None), ("t.fine", {"n": 2}, None)])
    refusing = True
    broker = failing(lambda message: refusing and message.topic == "t.poison")
    relay = OutboxRelay(
        async_engine, broker, max_attempts=3, base_backoff=10.0, max_backoff=100.0, listen=False
    )

    before = datetime.now(UTC)
    assert await relay.relay_once() == PassResult(claimed=2, published=1, retried=1)
    poison_row = rows(engine)[0]
    assert (poison_row.status, poison_row.attempts, poison_row.claim_owner) == ("pending", 1, None)
    assert poison_row.last_error == f"PublishError: in-memory broker: fail_when refused {poison}"
    next_at = as_utc(poison_row.next_attempt_at)
    assert next_at is not None
    assert before + timedelta(seconds=5) <= next_at <= datetime.now(UTC) + timedelta(seconds=10)
    # Not due yet: nothing is claimed, nothing is slept on.
    assert await relay.relay_once() == PassResult()

    make_due(engine)
    assert await relay.relay_once() == PassResult(claimed=1, retried=1)
    assert rows(engine)[0].attempts == 2
    make_due(engine)
    assert await relay.relay_once() == PassResult(claimed=1, dead=1)
    make_due(engine)
    assert await relay.relay_once() == PassResult()
    dead_row = rows(engine)[0]
    assert (dead_row.status, dead_row.attempts) == ("dead", 3)

    health = outbox_health(engine)
    assert (health.pending, health.dead, health.oldest_pending_age) == (0, 1, None)
    [dead] = list_dead(engine)
    assert (dead.id, dead.topic, dead.attempts, dead.payload) == (poison, "t.poison", 3, {"n": 1})
    assert dead.last_error is not None
    assert list_dead(engine, topic="other") == []

    refusing = False
    assert await requeue_dead(async_engine, [fine]) == 0  # published, not dead: ignored
    assert requeue_dead(engine, topic="other") == 0
    assert requeue_dead(engine, [poison]) == 1
    requeued = rows(engine)[0]
    assert (requeued.status, requeued.attempts, requeued.claim_owner) == ("pending", 0, None)
    assert await relay.relay_once() == PassResult(claimed=1, published=1)
    assert broker.ids() == [fine, poison]
    assert outbox_health(engine).dead == 0


async def test_failed_keyed_event_holds_back_the_rest_of_its_key(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(
        engine,
        [
            ("t", {"i": 0}, "a"),
            ("t", {"i": 1}, "b"),
            ("t", {"i": 2}, "a"),
            ("t", {"i": 3}, None),
            ("t", {"i": 4}, "a"),
        ],
    )
    refused = {ids[0]}
    broker = failing(lambda message: message.id in refused)
    relay = OutboxRelay(async_engine, broker, base_backoff=30.0, max_backoff=30.0, listen=False)

    # All five are claimed together (a's later events follow their head in the batch).
    assert await relay.relay_once() == PassResult(claimed=5, published=2, retried=1, released=2)
    assert by_key(broker) == {"b": [{"i": 1}], None: [{"i": 3}]}
    by_seq = rows(engine)
    assert [(row.status, row.attempts) for row in by_seq] == [
        ("pending", 1),
        ("published", 0),
        ("pending", 0),
        ("published", 0),
        ("pending", 0),
    ]
    assert by_seq[2].last_error is None
    # Key a is blocked while its head backs off, even though its followers are due: they
    # are moved behind it (out of the claim's window), then nothing is claimable.
    assert await relay.relay_once() == PassResult(deferred=2)
    assert await relay.relay_once() == PassResult()

    refused.clear()
    make_due(engine)
    assert await relay.relay_once() == PassResult(claimed=3, published=3)
    assert by_key(broker)["a"] == [{"i": 0}, {"i": 2}, {"i": 4}]


async def test_dead_lettered_event_stops_blocking_its_key(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(engine, [("t", {"i": 0}, "a"), ("t", {"i": 1}, "a"), ("t", {"i": 2}, "a")])
    broker = failing(lambda message: message.id == ids[0])
    relay = OutboxRelay(async_engine, broker, max_attempts=1, listen=False)

    assert await relay.relay_once() == PassResult(claimed=3, dead=1, released=2)
    assert await relay.relay_once() == PassResult(claimed=2, published=2)
    assert broker.ids() == ids[1:]
    assert [row.status for row in rows(engine)] == ["dead", "published", "published"]


class RaisingBroker(InMemoryBroker):
    def __init__(self, results: int | None = None) -> None:
        super().__init__()
        self.results = results

    async def publish_batch(self, messages: list[OutboxMessage]) -> list[BaseException | None]:  # type: ignore[override]
        if self.results is None:
            raise RuntimeError("broker bug")
        return [None] * self.results


@pytest.mark.parametrize("results", [None, 1])
async def test_a_broker_that_breaks_its_contract_counts_as_a_failure(
    engine: sa.Engine, async_engine: AsyncEngine, results: int | None
) -> None:
    add_events(engine, [("t", {"i": 0}, None), ("t", {"i": 1}, "k")])
    relay = OutboxRelay(async_engine, RaisingBroker(results), listen=False)
    assert await relay.relay_once() == PassResult(claimed=2, retried=2)
    expected = "RuntimeError: broker bug" if results is None else "RuntimeError: broker Raising"
    assert rows(engine)[0].last_error.startswith(expected)


def test_requeue_refuses_bad_ids_before_writing(engine: sa.Engine) -> None:
    with pytest.raises(ValueError, match="not an outbox event id"):
        requeue_dead(engine, ["not-a-uuid"])
    with pytest.raises(TypeError, match="not a single str"):
        requeue_dead(engine, "7d5f8a6e-1c2b-4f5e-9a8b-7c6d5e4f3a2b")
    assert requeue_dead(engine, []) == 0
