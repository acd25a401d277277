"""The in-memory broker: storage, failure injection, per-key blocking, waiting."""

from __future__ import annotations

import asyncio

import pytest

from sagaz.outbox.brokers import (
    Broker,
    BrokerConnectionError,
    EarlierMessageFailedError,
    InMemoryBroker,
    PublishError,
)
from sagaz.outbox.brokers.memory import decode, message_id_of
from tests.brokers.broker_helpers import assert_prefix_per_key, make_messages


async def test_publishes_in_order_per_topic() -> None:
    broker = InMemoryBroker()
    assert isinstance(broker, Broker)
    messages = make_messages(["a", "b"], 10)
    assert await broker.publish_batch(messages) == [None] * 10
    assert broker.ids() == [m.id for m in messages]
    assert broker.ids("a") == [m.id for m in messages if m.topic == "a"]
    assert broker.ids("missing") == []
    assert broker.connected
    assert broker.connections == 1
    assert broker.batches == 1
    assert await broker.publish_batch([]) == []
    await broker.close()
    assert not broker.connected
    await broker.publish_batch(messages[:1])  # reconnects on its own
    assert broker.connections == 2
    assert broker.ids()[-1] == messages[0].id  # a duplicate is kept: at-least-once


async def test_fail_next_blocks_later_messages_of_the_same_key() -> None:
    broker = InMemoryBroker()
    a1, a2, b1, a3, none1 = make_messages("t", 5, keys=["a", "a", "b", "a", None])
    broker.fail_next(1)
    outcomes = await broker.publish_batch([a1, a2, b1, a3, none1])
    assert isinstance(outcomes[0], PublishError)
    assert isinstance(outcomes[1], EarlierMessageFailedError)
    assert outcomes[1].earlier_id == a1.id
    assert outcomes[2] is None
    assert isinstance(outcomes[3], EarlierMessageFailedError)
    assert outcomes[4] is None
    assert broker.ids() == [b1.id, none1.id]
    assert await broker.publish_batch([a1, a2, a3]) == [None] * 3


async def test_fail_chosen_messages_a_number_of_times_or_always() -> None:
    broker = InMemoryBroker()
    once, always, fine = make_messages("t", 3, keys=[None])
    custom = ConnectionError("boom")
    broker.fail_messages(once.id)
    broker.fail_messages(always.id, times=None, error=custom)
    first = await broker.publish_batch([once, always, fine])
    assert isinstance(first[0], PublishError)
    assert first[1] is custom
    assert first[2] is None
    second = await broker.publish_batch([once, always])
    assert second[0] is None
    assert second[1] is custom
    broker.reset_failures()
    assert await broker.publish_batch([always]) == [None]


async def test_fail_when_predicate() -> None:
    broker = InMemoryBroker()
    messages = make_messages("t", 6, keys=[None])
    special = RuntimeError("special")
    broker.fail_when(lambda m: special if m.payload["n"] == 0 else m.payload["n"] % 2 == 1)
    outcomes = await broker.publish_batch(messages)
    assert outcomes[0] is special
    assert [o is None for o in outcomes[1:]] == [False, True, False, True, False]
    broker.fail_when(None)
    assert await broker.publish_batch(messages) == [None] * 6


async def test_cut_connection_after_fails_the_rest_of_the_batch() -> None:
    broker = InMemoryBroker()
    messages = make_messages("t", 10)
    broker.cut_connection_after(4)
    outcomes = await broker.publish_batch(messages)
    assert outcomes[:4] == [None] * 4
    assert all(isinstance(o, BrokerConnectionError) for o in outcomes[4:])
    assert_prefix_per_key(messages, outcomes)
    assert not broker.connected
    assert await broker.publish_batch(messages[4:]) == [None] * 6
    assert broker.connections == 2
    assert broker.ids() == [m.id for m in messages]


async def test_wait_for_and_delay() -> None:
    broker = InMemoryBroker(delay=0.01)
    messages = make_messages("t", 4)

    async def publish_later() -> None:
        for message in messages:
            await broker.publish_batch([message])

    task = asyncio.create_task(publish_later())
    async with asyncio.timeout(5):
        await broker.wait_for(4)
        await broker.wait_for(4, topic="t")
    await task
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await broker.wait_for(5)
    broker.clear()
    assert broker.published == []
    assert broker.ids("t") == []


def test_consumer_helpers() -> None:
    [message] = make_messages("t", 1, keys=["k"])
    assert message_id_of(message) == message.id
    received = decode(message)
    assert (received.id, received.topic, received.key) == (message.id, "t", "k")
    assert received.correlation_id == "corr-0"
    assert received.raw is message


async def test_twenty_thousand_messages_are_cheap() -> None:
    broker = InMemoryBroker()
    messages = make_messages("t", 1000)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(20):
        await broker.publish_batch(messages)
    assert len(broker.published) == 20_000
    assert loop.time() - started < 2  # far below the relay's 20,000 events/s budget
