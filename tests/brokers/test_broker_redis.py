"""Redis Streams broker against the real Redis on 127.0.0.1:6379."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.asyncio as aioredis

from sagaz.outbox.brokers import (
    BrokerConnectionError,
    EarlierMessageFailedError,
    MalformedMessageError,
    OutboxMessage,
    PublishError,
)
from sagaz.outbox.brokers.redis import (
    RedisStreamsBroker,
    decode,
    ensure_group,
    message_id_of,
    read_group,
    read_stream,
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
from tests.brokers.conftest import REDIS, require_server

URL = f"redis://{REDIS[0]}:{REDIS[1]}/0"


@pytest.fixture
async def client() -> AsyncIterator[aioredis.Redis]:
    require_server("Redis", REDIS)
    redis_client = aioredis.Redis.from_url(URL)
    yield redis_client
    await redis_client.aclose()


@pytest.fixture
async def stream(client: aioredis.Redis, unique: str) -> AsyncIterator[str]:
    name = f"sagaz-test-{unique}"
    yield name
    await client.delete(name, f"{name}-other", f"{name}-wrongtype")


@pytest.fixture
async def broker() -> AsyncIterator[RedisStreamsBroker]:
    redis_broker = RedisStreamsBroker(URL)
    yield redis_broker
    await redis_broker.close()


async def test_batch_arrives_intact_and_in_order(
    broker: RedisStreamsBroker, client: aioredis.Redis, stream: str
) -> None:
    messages = make_messages([stream, f"{stream}-other"], 300)
    outcomes = await broker.publish_batch(messages)
    assert list(outcomes) == [None] * 300

    received = await read_stream(client, stream) + await read_stream(client, f"{stream}-other")
    assert len(received) == 300
    by_id = {m.id: m for m in received}
    for sent in messages:
        got = by_id[sent.id]
        assert got.topic == sent.topic
        assert got.payload == sent.payload
        assert got.key == sent.key
        assert got.correlation_id == sent.headers["correlation-id"]
        assert got.headers["x-tenant"] == "acme"
        assert got.headers["sagaz-message-id"] == sent.id
        assert got.headers.get("sagaz-saga-id") == sent.saga_id
    for topic in (stream, f"{stream}-other"):
        ids = [m.id for m in await read_stream(client, topic)]
        assert_each_arrived_once_in_key_order([m for m in messages if m.topic == topic], ids)


async def test_entry_fields_and_decoding_helpers(
    broker: RedisStreamsBroker, client: aioredis.Redis, stream: str
) -> None:
    [message] = make_messages(stream, 1, keys=["k"])
    assert await broker.publish_batch([message]) == [None]
    [(entry_id, fields)] = await client.xrange(stream)
    assert fields[b"id"] == message.id.encode()
    assert fields[b"key"] == b"k"
    assert json.loads(fields[b"payload"]) == message.payload
    assert json.loads(fields[b"headers"])["correlation-id"] == "corr-0"
    assert message_id_of(fields) == message_id_of((entry_id, fields)) == message.id
    assert decode((entry_id, fields), stream=stream).raw == (entry_id, fields)

    with pytest.raises(MalformedMessageError, match="no message id in the 'id' field"):
        message_id_of({b"payload": b"{}"})
    with pytest.raises(MalformedMessageError, match=r"entry .*: the payload is not UTF-8 JSON"):
        decode({b"id": b"x", b"payload": b"{nope"}, stream=stream)


async def test_consumer_group_helpers(
    broker: RedisStreamsBroker, client: aioredis.Redis, stream: str
) -> None:
    await ensure_group(client, stream, "billing")
    await ensure_group(client, stream, "billing")  # idempotent
    messages = make_messages(stream, 5)
    assert await broker.publish_batch(messages) == [None] * 5
    received = await read_group(client, stream, "billing", "worker-1", count=10)
    assert [m.id for m in received] == [m.id for m in messages]
    assert await client.xack(stream, "billing", *(m.raw[0] for m in received)) == 5


async def test_command_error_holds_back_the_later_messages_of_its_key_unsent(
    broker: RedisStreamsBroker, client: aioredis.Redis, stream: str
) -> None:
    wrong = f"{stream}-wrongtype"
    await client.set(wrong, "not a stream")
    first, blocked, other_key = make_messages(stream, 3, keys=["a", "a", "b"])
    bad = make_messages(wrong, 1, keys=["a"])[0]
    messages = [first, bad, blocked, other_key]
    outcomes = await broker.publish_batch(messages)
    assert outcomes[0] is None
    assert isinstance(outcomes[1], PublishError)
    assert "WRONGTYPE" in str(outcomes[1])
    assert f"stream {wrong!r}" in str(outcomes[1])
    # Not sent: it would have reached the stream before `bad`.
    assert isinstance(outcomes[2], EarlierMessageFailedError)
    assert outcomes[3] is None
    assert [m.id for m in await read_stream(client, stream)] == [first.id, other_key.id]


async def test_cut_connection_reports_failures_then_reconnects(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    client: aioredis.Redis,
    stream: str,
) -> None:
    proxy = await make_proxy(REDIS)
    broker = RedisStreamsBroker(f"redis://127.0.0.1:{proxy.port}/0", connect_timeout=1)
    try:
        first = make_messages(stream, 50)
        assert await broker.publish_batch(first) == [None] * 50

        proxy.drop()  # the server goes away: existing and new connections fail
        down = make_messages(stream, 50, start=50)
        outcomes = await broker.publish_batch(down)
        assert_connection_failed(outcomes)

        proxy.restore()
        assert await broker.publish_batch(down) == [None] * 50
    finally:
        await broker.close()
    ids = [m.id for m in await read_stream(client, stream)]
    assert_each_arrived_once_in_key_order(first + down, ids)


async def test_connection_cut_in_the_middle_of_a_batch_loses_nothing(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    client: aioredis.Redis,
    stream: str,
) -> None:
    proxy = await make_proxy(REDIS)
    broker = RedisStreamsBroker(f"redis://127.0.0.1:{proxy.port}/0", connect_timeout=1)
    try:
        assert await broker.publish_batch(make_messages(stream, 1, keys=[None])) == [None]
        messages = make_messages(stream, 400)
        proxy.drop_after(20_000)  # a fraction of the pipeline reaches Redis
        outcomes = await broker.publish_batch(messages)
        assert_prefix_per_key(messages, outcomes)
        assert any(outcome is not None for outcome in outcomes)
        proxy.restore()
        await retry_failed(broker.publish_batch, messages, outcomes)
    finally:
        await broker.close()
    received = [m.id for m in await read_stream(client, stream)][1:]
    assert_first_arrivals_in_key_order(messages, received)


async def test_unreachable_server_is_reported_not_raised(unique: str) -> None:
    port = closed_port()
    broker = RedisStreamsBroker(f"redis://127.0.0.1:{port}/0", connect_timeout=0.5)
    outcomes = await broker.publish_batch(make_messages(f"t-{unique}", 3))
    assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
    assert f"redis: cannot connect to redis://127.0.0.1:{port}/0: ConnectionError" in str(
        outcomes[0]
    )
    await broker.close()
    assert_nothing_leaked()


async def test_failed_connect_raises_connection_error_naming_the_url_without_secrets() -> None:
    port = closed_port()
    broker = RedisStreamsBroker(
        f"redis://:s3cret@127.0.0.1:{port}/2?health_check_interval=30", connect_timeout=0.5
    )
    with pytest.raises(BrokerConnectionError) as raised:
        await broker.connect()
    text = str(raised.value)
    assert f"redis://:***@127.0.0.1:{port}/2: ConnectionError" in text
    assert "s3cret" not in text
    await broker.close()
    assert_nothing_leaked()


@pytest.mark.parametrize("mode", ["close", "garbage", "silent"])
async def test_failed_handshake_leaves_no_socket_open(mode: NotABrokerMode) -> None:
    async with NotABroker(mode) as server:
        broker = RedisStreamsBroker(
            f"redis://127.0.0.1:{server.port}/0", connect_timeout=0.3, socket_timeout=0.3
        )
        with pytest.raises(BrokerConnectionError, match=f"127.0.0.1:{server.port}"):
            await broker.connect()
        assert sockets_to(server.port) == 0
        outcomes = await broker.publish_batch(make_messages("x", 2))
        assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
        assert sockets_to(server.port) == 0
        await broker.close()
    assert_nothing_leaked()


async def test_server_that_stops_reading_fails_the_batch_and_frees_its_socket(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    client: aioredis.Redis,
    stream: str,
) -> None:
    """20 MB fill the socket buffers of a stalled connection. redis-py's write times out,
    and it then closes the connection gracefully, which waits for the buffers to drain:
    the socket stayed open for good (until the server read again or the kernel gave up)."""
    proxy = await make_proxy(REDIS)
    broker = RedisStreamsBroker(
        f"redis://127.0.0.1:{proxy.port}/0", socket_timeout=0.5, connect_timeout=0.5
    )
    try:
        await broker.connect()
        proxy.stall()
        started = time.monotonic()
        async with asyncio.timeout(10):
            outcomes = await broker.publish_batch(big_messages(stream, 40, 500_000))
        assert time.monotonic() - started < 3
        assert_connection_failed(outcomes)
        assert "pipeline failed: TimeoutError" in str(outcomes[0])
        assert sockets_to(proxy.port) == 0
        proxy.resume()
        retry = make_messages(stream, 5)
        assert await broker.publish_batch(retry) == [None] * 5
    finally:
        await broker.close()
    assert sockets_to(proxy.port) == 0
    assert_nothing_leaked()


async def test_maxlen_trims_the_stream(client: aioredis.Redis, stream: str) -> None:
    broker = RedisStreamsBroker(URL, maxlen=10)
    try:
        for start in range(0, 500, 100):
            assert (
                await broker.publish_batch(make_messages(stream, 100, start=start)) == [None] * 100
            )
    finally:
        await broker.close()
    assert await client.xlen(stream) < 500  # approximate trimming (MAXLEN ~)


async def test_stream_prefix_and_empty_batch(client: aioredis.Redis, stream: str) -> None:
    broker = RedisStreamsBroker(URL, stream_prefix=f"{stream}-")
    try:
        assert await broker.publish_batch([]) == []
        [message] = make_messages("other", 1)
        assert await broker.publish_batch([message]) == [None]
    finally:
        await broker.close()
    assert [m.id for m in await read_stream(client, f"{stream}-other")] == [message.id]


async def test_unencodable_message_fails_and_holds_back_its_key_unsent(
    broker: RedisStreamsBroker, client: aioredis.Redis, stream: str
) -> None:
    good_a, later_a, other = make_messages(stream, 3, keys=["a", "a", "b"])
    bad_a = OutboxMessage(id="bad", topic=stream, payload={"n": {1, 2}}, key="a")
    outcomes = await broker.publish_batch([good_a, bad_a, later_a, other])
    assert outcomes[0] is None
    assert isinstance(outcomes[1], PublishError)
    assert "cannot encode bad" in str(outcomes[1])
    assert isinstance(outcomes[2], EarlierMessageFailedError)
    assert outcomes[3] is None
    # The held-back message was not even sent: the stream never saw it out of order.
    assert [m.id for m in await read_stream(client, stream)] == [good_a.id, other.id]
