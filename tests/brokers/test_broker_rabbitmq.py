"""RabbitMQ broker against the real RabbitMQ on 127.0.0.1:5672 (guest/guest)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue

from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers import BrokerConnectionError, MalformedMessageError, PublishError
from sagaz.outbox.brokers.rabbitmq import (
    RabbitMQBroker,
    declare_bound_queue,
    decode,
    message_id_of,
)
from tests.brokers.broker_helpers import (
    NotABroker,
    NotABrokerMode,
    TcpProxy,
    assert_connection_failed,
    assert_each_arrived_once_in_key_order,
    assert_first_arrivals_in_key_order,
    assert_nothing_leaked,
    assert_prefix_per_key,
    big_messages,
    closed_port,
    make_messages,
    retry_failed,
    sockets_to,
)
from tests.brokers.conftest import RABBITMQ, require_server

URL = f"amqp://guest:guest@{RABBITMQ[0]}:{RABBITMQ[1]}/"


@pytest.fixture
async def channel() -> AsyncIterator[AbstractChannel]:
    require_server("RabbitMQ", RABBITMQ)
    connection = await aio_pika.connect(URL)
    yield await connection.channel()
    await connection.close()


@pytest.fixture
async def exchange(channel: AbstractChannel, unique: str) -> AsyncIterator[str]:
    """A fresh exchange name (the broker declares it); deleted afterwards."""
    name = f"sagaz-test-{unique}"
    yield name
    await channel.exchange_delete(name)


@pytest.fixture
async def queue(
    channel: AbstractChannel, exchange: str, unique: str
) -> AsyncIterator[AbstractQueue]:
    bound = await declare_bound_queue(channel, f"sagaz-test-{unique}", exchange=exchange)
    yield bound
    await bound.delete(if_unused=False, if_empty=False)


async def drain(
    queue: AbstractQueue, count: int, *, wait: float = 10.0
) -> list[AbstractIncomingMessage]:
    """Consume (auto-ack) until `count` distinct message ids arrived and the queue is
    empty, or `wait` seconds passed; duplicates are kept."""
    received: list[AbstractIncomingMessage] = []
    distinct: set[str | None] = set()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while loop.time() < deadline:
        message = await queue.get(fail=False, no_ack=True)
        if message is None:
            if len(distinct) >= count:
                break
            await asyncio.sleep(0.02)
            continue
        received.append(message)
        distinct.add(message.message_id)
    return received


async def test_batch_arrives_intact_and_in_order(exchange: str, queue: AbstractQueue) -> None:
    broker = RabbitMQBroker(URL, exchange=exchange)
    messages = make_messages(["orders.created", "orders.paid"], 300)
    try:
        assert await broker.publish_batch(messages) == [None] * 300
    finally:
        await broker.close()
    delivered = await drain(queue, 300)
    assert_each_arrived_once_in_key_order(messages, [message_id_of(m) for m in delivered])
    by_id = {message_id_of(m): m for m in delivered}
    for sent in messages:
        got = by_id[sent.id]
        assert got.message_id == sent.id
        assert got.correlation_id == sent.headers["correlation-id"]
        assert got.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
        assert got.content_type == "application/json"
        assert got.routing_key == sent.topic
        decoded = decode(got)
        assert decoded.payload == sent.payload
        assert decoded.key == sent.key
        assert decoded.topic == sent.topic
        assert decoded.correlation_id == sent.headers["correlation-id"]
        assert decoded.headers["x-tenant"] == "acme"
        assert decoded.headers.get("sagaz-saga-id") == sent.saga_id


async def test_unroutable_messages_fail_when_mandatory(
    exchange: str, channel: AbstractChannel
) -> None:
    broker = RabbitMQBroker(URL, exchange=exchange, mandatory=True)
    try:
        outcomes = await broker.publish_batch(make_messages("nobody.listens", 3, keys=["k"]))
    finally:
        await broker.close()
    assert isinstance(outcomes[0], PublishError)
    assert "unroutable" in str(outcomes[0])
    assert all(isinstance(outcome, PublishError) for outcome in outcomes)


async def test_cut_connection_reports_failures_then_reconnects(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    exchange: str,
    queue: AbstractQueue,
) -> None:
    proxy = await make_proxy(RABBITMQ)
    broker = RabbitMQBroker(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/", exchange=exchange, connect_timeout=2
    )
    try:
        first = make_messages("orders.created", 50)
        assert await broker.publish_batch(first) == [None] * 50
        proxy.drop()
        down = make_messages("orders.created", 50, start=50)
        outcomes = await broker.publish_batch(down)
        assert_connection_failed(outcomes)
        proxy.restore()
        assert await broker.publish_batch(down) == [None] * 50
    finally:
        await broker.close()
    delivered = await drain(queue, 100)
    assert_each_arrived_once_in_key_order(first + down, [message_id_of(m) for m in delivered])


async def test_connection_cut_in_the_middle_of_a_batch_loses_nothing(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    exchange: str,
    queue: AbstractQueue,
) -> None:
    proxy = await make_proxy(RABBITMQ)
    broker = RabbitMQBroker(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/", exchange=exchange, connect_timeout=2
    )
    messages = make_messages("orders.created", 400)
    try:
        assert await broker.publish_batch(make_messages("warm.up", 1)) == [None]
        proxy.drop_after(30_000)
        outcomes = await broker.publish_batch(messages)
        assert_prefix_per_key(messages, outcomes)
        assert any(outcome is not None for outcome in outcomes)
        proxy.restore()
        await retry_failed(broker.publish_batch, messages, outcomes)
    finally:
        await broker.close()
    delivered = [message_id_of(m) for m in await drain(queue, 401)][1:]
    assert_first_arrivals_in_key_order(messages, delivered)


async def test_unreachable_server_is_reported_not_raised(unique: str) -> None:
    port = closed_port()
    broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{port}/", connect_timeout=1)
    outcomes = await broker.publish_batch(make_messages(f"t{unique}", 2))
    assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
    assert f"rabbitmq: cannot connect to amqp://guest:***@127.0.0.1:{port}/: " in str(outcomes[0])
    await broker.close()
    assert_nothing_leaked()


async def test_failed_connect_raises_connection_error_naming_the_url_without_secrets() -> None:
    port = closed_port()
    broker = RabbitMQBroker(
        f"amqp://orders:s3cret@127.0.0.1:{port}/prod?heartbeat=30", connect_timeout=1
    )
    with pytest.raises(BrokerConnectionError) as raised:
        await broker.connect()
    text = str(raised.value)
    assert f"amqp://orders:***@127.0.0.1:{port}/prod: AMQPConnectionError" in text
    assert "s3cret" not in text
    await broker.close()
    assert_nothing_leaked()


@pytest.mark.parametrize("mode", ["close", "garbage", "silent"])
async def test_failed_handshake_leaves_no_socket_open(mode: NotABrokerMode) -> None:
    async with NotABroker(mode) as server:
        broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{server.port}/", connect_timeout=0.3)
        with pytest.raises(BrokerConnectionError, match=f"127.0.0.1:{server.port}"):
            await broker.connect()
        assert sockets_to(server.port) == 0
        outcomes = await broker.publish_batch(make_messages("x", 2))
        assert_connection_failed(outcomes)
        assert sockets_to(server.port) == 0
        await broker.close()
    assert_nothing_leaked()


async def test_server_that_stops_reading_fails_the_batch_and_frees_its_socket(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]], exchange: str
) -> None:
    """20 MB fill the socket buffers of a stalled connection. The confirmations time
    out; aiormq's graceful close then waits for the socket to drain for three heartbeat
    intervals (about three minutes by default). The broker aborts it instead."""
    proxy = await make_proxy(RABBITMQ)
    broker = RabbitMQBroker(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/",
        exchange=exchange,
        confirm_timeout=0.5,
        connect_timeout=0.5,
    )
    try:
        await broker.connect()
        proxy.stall()
        started = time.monotonic()
        async with asyncio.timeout(10):  # the old code waited here for minutes
            outcomes = await broker.publish_batch(big_messages("big", 40, 500_000))
        assert time.monotonic() - started < 3
        assert_connection_failed(outcomes)
        assert sockets_to(proxy.port) == 0
        proxy.resume()
        assert await broker.publish_batch(make_messages("a.b", 3)) == [None] * 3
    finally:
        await broker.close()
    assert sockets_to(proxy.port) == 0
    assert_nothing_leaked()


async def test_connection_aiormq_finds_stuck_is_a_failure_not_a_cancellation(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]], exchange: str
) -> None:
    """aiormq closes a connection that sent nothing for three heartbeat intervals and
    cancels the publishes waiting on it. The old code re-raised that CancelledError out of
    publish_batch, which the relay does not catch: its loop died. (heartbeat=1, the
    shortest, makes that six seconds.)"""
    proxy = await make_proxy(RABBITMQ)
    broker = RabbitMQBroker(
        f"amqp://guest:guest@127.0.0.1:{proxy.port}/?heartbeat=1",
        exchange=exchange,
        confirm_timeout=30,
        connect_timeout=1,
    )
    try:
        await broker.connect()
        proxy.stall()
        async with asyncio.timeout(15):
            outcomes = await broker.publish_batch(make_messages("a.b", 5))
        assert_connection_failed(outcomes)
        assert "aiormq closed the connection" in str(outcomes[0])
        proxy.resume()
        assert await broker.publish_batch(make_messages("a.b", 3)) == [None] * 3
    finally:
        await broker.close()
    assert sockets_to(proxy.port) == 0


async def test_existing_exchange_without_declaring(
    channel: AbstractChannel, exchange: str, queue: AbstractQueue
) -> None:
    broker = RabbitMQBroker(URL, exchange=exchange, declare_exchange=False)
    try:
        assert await broker.publish_batch(make_messages("a.b", 2)) == [None, None]
    finally:
        await broker.close()
    assert len(await drain(queue, 2)) == 2


async def test_missing_exchange_is_a_connection_failure_not_an_exception(unique: str) -> None:
    require_server("RabbitMQ", RABBITMQ)
    broker = RabbitMQBroker(URL, exchange=f"absent-{unique}", declare_exchange=False)
    outcomes = await broker.publish_batch(make_messages("a.b", 1))
    await broker.close()
    assert isinstance(outcomes[0], BrokerConnectionError)
    assert "NOT_FOUND" in str(outcomes[0])


def test_invalid_exchange_type_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="exchange_type 'bogus'"):
        RabbitMQBroker(URL, exchange_type="bogus")


async def test_body_that_is_not_json_is_malformed(
    channel: AbstractChannel, queue: AbstractQueue, exchange: str
) -> None:
    target = await channel.get_exchange(exchange)
    await target.publish(aio_pika.Message(b"\xff not json", message_id="m-1"), routing_key="x")
    [message] = await drain(queue, 1)
    assert message_id_of(message) == "m-1"
    with pytest.raises(MalformedMessageError, match=r"key 'x' id m-1: the payload is not UTF-8"):
        decode(message)


async def test_concurrent_batches_share_one_connection(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    exchange: str,
    queue: AbstractQueue,
) -> None:
    proxy = await make_proxy(RABBITMQ)
    broker = RabbitMQBroker(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", exchange=exchange)
    batches = [make_messages(f"b{n}.x", 50) for n in range(4)]
    try:
        results = await asyncio.gather(*(broker.publish_batch(batch) for batch in batches))
    finally:
        await broker.close()
    assert all(list(outcomes) == [None] * 50 for outcomes in results)
    assert proxy.connections == 1
    assert len(await drain(queue, 200)) == 200
