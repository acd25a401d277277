"""Each real broker as the consumer tests see it: the URL a consumer is started with (its
options in the query string, short timings for tests), the relay's broker, a way to
publish raw (malformed) messages, and whether everything was acknowledged."""

from __future__ import annotations

import json
from typing import Any, Protocol

import aio_pika
import nats
import redis.asyncio as aioredis
from nats.js.errors import NotFoundError

from sagaz.outbox.brokers import Broker
from sagaz.outbox.brokers import nats as nats_broker
from sagaz.outbox.brokers import rabbitmq as rabbitmq_broker
from sagaz.outbox.brokers import redis as redis_broker
from tests.brokers.conftest import NATS, RABBITMQ, REDIS, require_server

GROUP = "billing"


class Side(Protocol):
    topic: str
    url: str

    async def prepare(self) -> None: ...
    def broker(self) -> Broker: ...
    async def publish_raw(self, payload: bytes, message_id: str | None) -> None: ...
    async def settled(self) -> bool: ...
    async def teardown(self) -> None: ...


class RedisSide:
    def __init__(self, token: str) -> None:
        require_server("Redis", REDIS)
        self.topic = f"consume{token}.events"
        base = f"redis://{REDIS[0]}:{REDIS[1]}/0"
        self.broker_url = base
        self.url = f"{base}?min_idle=0.5&claim_interval=0.2&batch_size=4&block=0.2"
        self.client = aioredis.Redis(host=REDIS[0], port=REDIS[1])

    async def prepare(self) -> None:
        pass  # the consumer creates its group at the stream's start

    def broker(self) -> Broker:
        return redis_broker.RedisStreamsBroker(self.broker_url)

    async def publish_raw(self, payload: bytes, message_id: str | None) -> None:
        fields: dict[Any, Any] = {"payload": payload, "headers": "{}"}
        if message_id is not None:
            fields["id"] = message_id
        await self.client.xadd(self.topic, fields)

    async def settled(self) -> bool:
        """Every entry delivered to the group and acknowledged."""
        groups: Any = await self.client.xinfo_groups(self.topic)
        stream: Any = await self.client.xinfo_stream(self.topic)
        group = next(g for g in groups if g["name"] in (GROUP, GROUP.encode()))
        return bool(
            group["pending"] == 0 and group["last-delivered-id"] == stream["last-generated-id"]
        )

    async def teardown(self) -> None:
        await self.client.delete(self.topic)
        await self.client.aclose()


class NatsSide:
    def __init__(self, token: str) -> None:
        require_server("NATS", NATS)
        self.stream = f"SAGAZ_CONSUME_{token}"
        self.topic = f"consume{token}.events"
        self.subjects = [f"consume{token}.>"]
        self.base = f"nats://{NATS[0]}:{NATS[1]}"
        self.url = (
            f"{self.base}?stream={self.stream}&ack_wait=2&batch_size=4"
            "&fetch_timeout=0.2&retry_delay=0.1"
        )
        self.client: nats.aio.client.Client | None = None

    async def prepare(self) -> None:
        self.client = await nats.connect(self.base)
        await nats_broker.ensure_stream(self.client.jetstream(), self.stream, self.subjects)

    def broker(self) -> Broker:
        return nats_broker.NatsJetStreamBroker(
            self.base, stream=self.stream, subjects=self.subjects
        )

    async def publish_raw(self, payload: bytes, message_id: str | None) -> None:
        assert self.client is not None
        headers = {nats_broker.MSG_ID_HEADER: message_id} if message_id is not None else None
        await self.client.jetstream().publish(self.topic, payload, headers=headers)

    async def settled(self) -> bool:
        assert self.client is not None
        try:
            info = await self.client.jetstream().consumer_info(self.stream, GROUP)
        except NotFoundError:
            return False
        return info.num_ack_pending == 0 and info.num_pending == 0

    async def teardown(self) -> None:
        assert self.client is not None
        await self.client.jetstream().delete_stream(self.stream)
        await self.client.close()


class RabbitMQSide:
    def __init__(self, token: str) -> None:
        require_server("RabbitMQ", RABBITMQ)
        self.topic = f"consume{token}.events"
        self.exchange = f"sagaz-consume-{token}"
        self.queue = f"q-consume-{token}"
        self.base = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/"
        self.url = (
            f"{self.base}?exchange={self.exchange}&queue={self.queue}&prefetch=4"
            "&receive_timeout=0.2&retry_delay=0.1"
        )
        self.connection: Any = None

    async def prepare(self) -> None:
        """Bind the queue before anything is published (RabbitMQ drops unroutable ones)."""
        self.connection = await aio_pika.connect(self.base)
        self.channel = await self.connection.channel()
        await rabbitmq_broker.declare_bound_queue(
            self.channel, self.queue, exchange=self.exchange, binding_keys=(self.topic,)
        )

    def broker(self) -> Broker:
        return rabbitmq_broker.RabbitMQBroker(self.base, exchange=self.exchange)

    async def publish_raw(self, payload: bytes, message_id: str | None) -> None:
        """aiormq gives every message an id of its own, and AMQP's message_id holds at most
        255 bytes: "no id" and "too long" are sent as ids the inbox cannot store (with a
        control character) instead."""
        exchange = await self.channel.get_exchange(self.exchange)
        if message_id is None:
            message_id = "no\x00id"
        elif len(message_id) > 255:
            message_id = message_id[:200] + "\x01"
        await exchange.publish(
            aio_pika.Message(payload, message_id=message_id), routing_key=self.topic
        )

    async def settled(self) -> bool:
        """No message ready in the queue (unacknowledged ones are not counted: call this
        after the consumers stopped, when RabbitMQ has requeued anything unacknowledged)."""
        queue = await self.channel.declare_queue(self.queue, passive=True)
        return bool(queue.declaration_result.message_count == 0)

    async def teardown(self) -> None:
        await self.channel.queue_delete(self.queue)
        await self.channel.exchange_delete(self.exchange)
        await self.connection.close()


SIDES = {"redis": RedisSide, "nats": NatsSide, "rabbitmq": RabbitMQSide}


def payload(n: int) -> bytes:
    return json.dumps({"n": n}).encode()
