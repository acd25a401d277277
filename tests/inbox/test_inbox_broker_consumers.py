"""Exactly-once processing end to end: messages published through each real broker reach a
consumer more than once (a relay retry, a redelivery after a missing ack), and the inbox
runs the handler once per message id, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import aio_pika
import nats
import pytest
import redis.asyncio as aioredis
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sagaz.outbox.brokers import OutboxMessage, ReceivedMessage
from sagaz.outbox.brokers import nats as nats_broker
from sagaz.outbox.brokers import rabbitmq as rabbitmq_broker
from sagaz.outbox.brokers import redis as redis_broker
from sagaz.outbox.inbox import ConsumerInbox
from tests.brokers.broker_helpers import make_messages
from tests.brokers.conftest import NATS, RABBITMQ, REDIS, require_server

COUNT = 100

app_metadata = sa.MetaData()
effects = sa.Table(
    "app_effects",
    app_metadata,
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("n", sa.Integer, nullable=False),
)

Deliveries = Callable[[list[OutboxMessage], str], Awaitable[list[ReceivedMessage]]]


async def via_redis(messages: list[OutboxMessage], token: str) -> list[ReceivedMessage]:
    """Published twice (a relay retry after a lost pipeline reply): every entry twice."""
    require_server("Redis", REDIS)
    stream = messages[0].topic
    broker = redis_broker.RedisStreamsBroker(f"redis://{REDIS[0]}:{REDIS[1]}/0")
    client = aioredis.Redis(host=REDIS[0], port=REDIS[1])
    try:
        await redis_broker.ensure_group(client, stream, "billing")
        assert await broker.publish_batch(messages) == [None] * len(messages)
        assert await broker.publish_batch(messages) == [None] * len(messages)
        received = await redis_broker.read_group(
            client, stream, "billing", "c1", count=2 * len(messages)
        )
        await client.xack(stream, "billing", *(m.raw[0] for m in received))
        return received
    finally:
        await client.delete(stream)
        await client.aclose()
        await broker.close()


async def via_rabbitmq(messages: list[OutboxMessage], token: str) -> list[ReceivedMessage]:
    """Consumed once without ack and the channel closed: RabbitMQ redelivers everything."""
    require_server("RabbitMQ", RABBITMQ)
    url = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/"
    exchange = f"sagaz-inbox-{token}"
    broker = rabbitmq_broker.RabbitMQBroker(url, exchange=exchange)
    connection = await aio_pika.connect(url)
    received: list[ReceivedMessage] = []
    try:
        setup = await connection.channel()
        queue = await rabbitmq_broker.declare_bound_queue(setup, f"q-{token}", exchange=exchange)
        assert await broker.publish_batch(messages) == [None] * len(messages)
        for ack in (False, True):
            channel = await connection.channel()
            bound = await channel.get_queue(queue.name)
            copies = 0
            async with asyncio.timeout(10):
                while copies < len(messages):
                    message = await bound.get(fail=False)
                    if message is None:
                        await asyncio.sleep(0.02)
                        continue
                    received.append(rabbitmq_broker.decode(message))
                    copies += 1
                    if ack:
                        await message.ack()
            await channel.close()  # unacknowledged messages go back to the queue
        await setup.queue_delete(queue.name)
        await setup.exchange_delete(exchange)
        return received
    finally:
        await connection.close()
        await broker.close()


async def via_nats(messages: list[OutboxMessage], token: str) -> list[ReceivedMessage]:
    """Fetched and nak'ed once (a consumer that crashed before acking), then fetched again."""
    require_server("NATS", NATS)
    stream = f"SAGAZ_INBOX_{token}"
    subject = f"inbox{token}.events"
    broker = nats_broker.NatsJetStreamBroker(
        f"nats://{NATS[0]}:{NATS[1]}", stream=stream, subjects=[f"inbox{token}.>"]
    )
    client = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
    js = client.jetstream()
    received: list[ReceivedMessage] = []
    try:
        assert await broker.publish_batch(messages) == [None] * len(messages)
        subscription = await js.pull_subscribe(subject, durable="billing", stream=stream)
        for ack in (False, True):
            fetched = await nats_broker.fetch(subscription, len(messages), max_wait=10)
            assert len(fetched) == len(messages)
            for message in fetched:
                received.append(nats_broker.decode(message))
                await (message.ack() if ack else message.nak())
        return received
    finally:
        await js.delete_stream(stream)
        await client.close()
        await broker.close()


@pytest.mark.parametrize("deliveries", [via_redis, via_rabbitmq, via_nats])
async def test_redelivered_messages_are_processed_once(
    async_engine: AsyncEngine, deliveries: Deliveries
) -> None:
    async with async_engine.begin() as connection:
        await connection.run_sync(app_metadata.create_all)
    token = uuid.uuid4().hex[:12]
    messages = make_messages(f"inbox{token}.events", COUNT)
    received = await deliveries(messages, token)
    assert len(received) == 2 * COUNT  # every message arrived twice

    inbox = ConsumerInbox("billing", async_sessionmaker(async_engine))
    runs: list[str] = []

    async def handle(session: AsyncSession, message: ReceivedMessage) -> None:
        runs.append(message.id)
        await session.execute(
            sa.insert(effects).values(message_id=message.id, n=message.payload["n"])
        )

    outcomes = [
        await inbox.process(message.id, lambda session, m=message: handle(session, m))
        for message in received
    ]
    assert outcomes.count(True) == COUNT
    assert sorted(runs) == sorted(m.id for m in messages)
    async with async_engine.connect() as connection:
        rows = (await connection.execute(sa.select(effects.c.n).order_by(effects.c.n))).scalars()
        assert list(rows) == list(range(COUNT))
