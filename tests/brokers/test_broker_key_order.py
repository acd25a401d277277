"""Per-key order when the server refuses one message of a key in the middle of a batch,
against the real servers: no later message of that key in the batch reaches the broker
before it, while other keys' messages of the same batch are published.

Each test makes the refusal deterministic: a JetStream stream's `max_msg_size`, a
RabbitMQ queue that rejects publishes when full (Redis: see test_broker_redis.py's
WRONGTYPE test)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

import aio_pika
import nats
import pytest
from aio_pika.abc import AbstractChannel
from nats.js.api import StreamConfig

from sagaz.outbox.brokers import EarlierMessageFailedError, PublishError
from sagaz.outbox.brokers.nats import NatsJetStreamBroker, fetch, message_id_of
from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker, declare_bound_queue
from tests.brokers.broker_helpers import (
    assert_each_arrived_once_in_key_order,
    make_messages,
    retry_failed,
)
from tests.brokers.conftest import NATS, RABBITMQ, require_server


async def test_nats_refused_message_is_not_overtaken_by_later_ones_of_its_key(
    unique: str,
) -> None:
    require_server("NATS", NATS)
    client = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
    js = client.jetstream()
    name, subject = f"SAGAZ_TEST_{unique}", f"t{unique}.orders"
    config = StreamConfig(name=name, subjects=[f"t{unique}.>"], max_msg_size=1024)
    await js.add_stream(config)
    try:
        # keys a, b, a, b, ...: a's second message is too large for the stream.
        messages = make_messages(subject, 8, keys=["a", "b"])
        messages[2] = dataclasses.replace(messages[2], payload={"blob": "x" * 2048})
        broker = NatsJetStreamBroker(f"nats://{NATS[0]}:{NATS[1]}")
        try:
            outcomes = await broker.publish_batch(messages)
            assert outcomes[0] is None
            assert isinstance(outcomes[2], PublishError)
            assert "message size exceeds maximum allowed" in str(outcomes[2])
            for later in (4, 6):  # not sent: they would have overtaken message 2
                assert isinstance(outcomes[later], EarlierMessageFailedError)
                assert messages[2].id in str(outcomes[later])
            assert [outcomes[n] for n in (1, 3, 5, 7)] == [None] * 4  # key b pipelined on
            subscription = await js.pull_subscribe(f"t{unique}.>", stream=name)
            stored = [message_id_of(m) for m in await fetch(subscription, 8, max_wait=1)]
            assert stored == [messages[n].id for n in (0, 1, 3, 5, 7)]

            # The stream is fixed; the relay's retry then stores key a in order.
            config.max_msg_size = -1
            await js.update_stream(config)
            await retry_failed(broker.publish_batch, messages, outcomes)
        finally:
            await broker.close()
        stored += [message_id_of(m) for m in await fetch(subscription, 8, max_wait=1)]
        assert_each_arrived_once_in_key_order(messages, stored)
    finally:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(name)
        await client.close()


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    require_server("RabbitMQ", RABBITMQ)
    connection = await aio_pika.connect(f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/")
    yield await connection.channel()
    await connection.close()


async def test_rabbitmq_nacked_message_is_not_overtaken_by_later_ones_of_its_key(
    channel: AbstractChannel, unique: str
) -> None:
    exchange = f"sagaz-test-{unique}"
    broker = RabbitMQBroker(f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/", exchange=exchange)
    await broker.connect()  # declares the exchange
    # One message fills queue `full`; RabbitMQ nacks every further one routed to it.
    full = await channel.declare_queue(
        f"sagaz-test-full-{unique}",
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await full.bind(exchange, routing_key="full")
    rest = await declare_bound_queue(
        channel, f"sagaz-test-rest-{unique}", exchange=exchange, binding_keys=("rest",)
    )
    try:
        a0, a1, a2 = make_messages("full", 3, keys=["a"])
        a2 = dataclasses.replace(a2, topic="rest")
        b0, b1, b2 = make_messages("rest", 3, keys=["b"])
        messages = [a0, b0, a1, b1, a2, b2]
        outcomes = await broker.publish_batch(messages)
        assert outcomes[0] is None
        assert isinstance(outcomes[2], PublishError)
        assert "refused" in str(outcomes[2])
        assert isinstance(outcomes[4], EarlierMessageFailedError)  # a2: not sent
        assert [outcomes[n] for n in (1, 3, 5)] == [None] * 3
        got = []
        while (message := await rest.get(fail=False, no_ack=True)) is not None:
            got.append(message.message_id)
        assert got == [b0.id, b1.id, b2.id]
    finally:
        await broker.close()
        await full.delete(if_unused=False, if_empty=False)
        await rest.delete(if_unused=False, if_empty=False)
        await channel.exchange_delete(exchange)
