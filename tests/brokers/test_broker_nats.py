"""NATS JetStream broker against the real nats-server (JetStream on) on 127.0.0.1:4222."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers import BrokerConnectionError, MalformedMessageError, PublishError
from sagaz.outbox.brokers.nats import (
    MSG_ID_HEADER,
    NatsJetStreamBroker,
    decode,
    ensure_stream,
    fetch,
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
from tests.brokers.conftest import NATS, require_server

URL = f"nats://{NATS[0]}:{NATS[1]}"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    require_server("NATS", NATS)
    connection = await nats.connect(URL)
    yield connection
    await connection.close()


@pytest.fixture
async def js(client: Client) -> JetStreamContext:
    return client.jetstream()


@pytest.fixture
async def stream(js: JetStreamContext, unique: str) -> AsyncIterator[str]:
    """A stream name whose subjects are `t<unique>.>`; the broker creates it."""
    name = f"SAGAZ_TEST_{unique}"
    yield name
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_stream(name)


def subjects_of(stream: str) -> str:
    return f"t{stream.removeprefix('SAGAZ_TEST_')}"


async def stored(js: JetStreamContext, stream: str, count: int) -> list[Msg]:
    subscription = await js.pull_subscribe(f"{subjects_of(stream)}.>", stream=stream)
    messages = await fetch(subscription, count, max_wait=5)
    await subscription.unsubscribe()
    return messages


async def test_batch_arrives_intact_and_in_order(js: JetStreamContext, stream: str) -> None:
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(URL, stream=stream, subjects=[f"{prefix}.>"])
    messages = make_messages([f"{prefix}.orders.created", f"{prefix}.orders.paid"], 300)
    try:
        assert await broker.publish_batch(messages) == [None] * 300
    finally:
        await broker.close()
    delivered = await stored(js, stream, 300)
    assert_each_arrived_once_in_key_order(messages, [message_id_of(m) for m in delivered])
    by_id = {message_id_of(m): m for m in delivered}
    for sent in messages:
        got = by_id[sent.id]
        assert got.headers is not None
        assert got.headers[MSG_ID_HEADER] == sent.id
        decoded = decode(got)
        assert decoded.topic == sent.topic
        assert decoded.payload == sent.payload
        assert decoded.key == sent.key
        assert decoded.correlation_id == sent.headers["correlation-id"]
        assert decoded.headers["x-tenant"] == "acme"
        assert decoded.headers.get("sagaz-saga-id") == sent.saga_id


async def test_jetstream_drops_a_republished_message(js: JetStreamContext, stream: str) -> None:
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(URL, stream=stream, subjects=[f"{prefix}.>"])
    messages = make_messages(f"{prefix}.x", 20)
    try:
        assert await broker.publish_batch(messages) == [None] * 20
        assert await broker.publish_batch(messages) == [None] * 20  # a relay retry
    finally:
        await broker.close()
    assert (await js.stream_info(stream)).state.messages == 20


async def test_subject_without_stream_fails_clearly(client: Client, unique: str) -> None:
    broker = NatsJetStreamBroker(URL)
    try:
        outcomes = await broker.publish_batch(make_messages(f"nostream{unique}.x", 2, keys=["k"]))
    finally:
        await broker.close()
    assert isinstance(outcomes[0], PublishError)
    assert "no JetStream stream captures" in str(outcomes[0])
    assert isinstance(outcomes[1], PublishError)


async def test_ensure_stream_adds_missing_subjects(js: JetStreamContext, stream: str) -> None:
    prefix = subjects_of(stream)
    await ensure_stream(js, stream, [f"{prefix}.a.>"], duplicate_window=30)
    info = await ensure_stream(js, stream, [f"{prefix}.a.>", f"{prefix}.b.>"])
    assert info.config.subjects == [f"{prefix}.a.>", f"{prefix}.b.>"]
    assert info.config.duplicate_window == 30


async def test_cut_connection_reports_failures_then_reconnects(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    js: JetStreamContext,
    stream: str,
) -> None:
    proxy = await make_proxy(NATS)
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(
        f"nats://127.0.0.1:{proxy.port}",
        stream=stream,
        subjects=[f"{prefix}.>"],
        ack_timeout=3,
        connect_timeout=1,
    )
    try:
        first = make_messages(f"{prefix}.a", 50)
        assert await broker.publish_batch(first) == [None] * 50
        proxy.drop()
        down = make_messages(f"{prefix}.a", 50, start=50)
        outcomes = await broker.publish_batch(down)
        assert_connection_failed(outcomes)
        proxy.restore()
        assert await broker.publish_batch(down) == [None] * 50
    finally:
        await broker.close()
    delivered = await stored(js, stream, 100)
    assert_each_arrived_once_in_key_order(first + down, [message_id_of(m) for m in delivered])


async def test_connection_cut_in_the_middle_of_a_batch_loses_nothing(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    js: JetStreamContext,
    stream: str,
) -> None:
    proxy = await make_proxy(NATS)
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(
        f"nats://127.0.0.1:{proxy.port}",
        stream=stream,
        subjects=[f"{prefix}.>"],
        ack_timeout=3,
        connect_timeout=1,
    )
    messages = make_messages(f"{prefix}.a", 400)
    try:
        assert await broker.publish_batch(make_messages(f"{prefix}.warm", 1)) == [None]
        proxy.drop_after(30_000)
        outcomes = await broker.publish_batch(messages)
        assert_prefix_per_key(messages, outcomes)
        assert any(outcome is not None for outcome in outcomes)
        proxy.restore()
        await retry_failed(broker.publish_batch, messages, outcomes)
    finally:
        await broker.close()
    delivered = [message_id_of(m) for m in await stored(js, stream, 401)][1:]
    assert_first_arrivals_in_key_order(messages, delivered)
    assert len(delivered) == 400  # JetStream dropped the repeats by Nats-Msg-Id


async def test_unreachable_server_is_reported_not_raised(unique: str) -> None:
    port = closed_port()
    broker = NatsJetStreamBroker(f"nats://127.0.0.1:{port}", connect_timeout=1)
    outcomes = await broker.publish_batch(make_messages(f"t{unique}", 2))
    assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
    assert f"nats: cannot connect to nats://127.0.0.1:{port}: ConnectionRefused" in str(outcomes[0])
    await broker.close()
    assert_nothing_leaked()


async def test_failed_connect_raises_connection_error_naming_the_url_without_secrets() -> None:
    port = closed_port()
    seen: list[Exception] = []

    async def error_cb(error: Exception) -> None:  # the application's own callback
        seen.append(error)

    broker = NatsJetStreamBroker(
        f"nats://alice:s3cret@127.0.0.1:{port},nats://t0ken@127.0.0.1:{port}",
        connect_timeout=1,
        connect_options={"error_cb": error_cb},
    )
    with pytest.raises(BrokerConnectionError) as raised:
        await broker.connect()
    text = str(raised.value)
    assert f"nats://alice:***@127.0.0.1:{port},nats://***@127.0.0.1:{port}" in text
    assert "s3cret" not in text
    assert "t0ken" not in text
    assert "ConnectionRefusedError" in text  # the cause, not nats-py's bare NoServersError
    assert seen, "the application's error_cb is still called"
    assert not broker.connected
    await broker.close()
    assert_nothing_leaked()


@pytest.mark.parametrize("mode", ["close", "garbage", "silent"])
async def test_failed_handshake_leaves_no_socket_open(mode: NotABrokerMode) -> None:
    async with NotABroker(mode) as server:
        broker = NatsJetStreamBroker(f"nats://127.0.0.1:{server.port}", connect_timeout=0.3)
        with pytest.raises(BrokerConnectionError, match=f"127.0.0.1:{server.port}"):
            await broker.connect()
        assert sockets_to(server.port) == 0
        outcomes = await broker.publish_batch(make_messages("x", 2))
        assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
        assert sockets_to(server.port) == 0
        await broker.close()
    assert_nothing_leaked()


async def test_stalled_server_fails_the_batch_at_the_ack_timeout(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    js: JetStreamContext,
    stream: str,
) -> None:
    proxy = await make_proxy(NATS)
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(
        f"nats://127.0.0.1:{proxy.port}",
        stream=stream,
        subjects=[f"{prefix}.>"],
        ack_timeout=0.5,
        connect_timeout=0.5,
    )
    try:
        assert await broker.publish_batch(make_messages(f"{prefix}.a", 1)) == [None]
        proxy.stall()
        started = time.monotonic()
        outcomes = await broker.publish_batch(make_messages(f"{prefix}.a", 20))
        assert time.monotonic() - started < 3
        assert_connection_failed(outcomes)
        assert "no JetStream acknowledgement within 0.5 s" in str(outcomes[0])
        assert sockets_to(proxy.port) == 0  # the stalled connection was dropped
        proxy.resume()
        assert await broker.publish_batch(make_messages(f"{prefix}.a", 5)) == [None] * 5
    finally:
        await broker.close()
    assert sockets_to(proxy.port) == 0


async def test_server_that_stops_reading_mid_batch_cannot_block_the_relay(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]], unique: str
) -> None:
    """20 MB fill the socket buffers and nats-py's pending buffer: nats-py then waits for
    a forced flush without a timeout of its own, and its close waits for the socket to
    drain. The batch must still end at about the ack timeout, its socket closed."""
    proxy = await make_proxy(NATS)
    broker = NatsJetStreamBroker(
        f"nats://127.0.0.1:{proxy.port}", ack_timeout=0.5, connect_timeout=0.5
    )
    topic = f"nostream{unique}.big"  # no stream: nothing is stored
    try:
        await broker.connect()
        proxy.stall()
        started = time.monotonic()
        async with asyncio.timeout(10):  # the old code waited here forever
            outcomes = await broker.publish_batch(big_messages(topic, 40, 500_000))
        assert time.monotonic() - started < 3
        assert_connection_failed(outcomes)
        assert sockets_to(proxy.port) == 0
    finally:
        await broker.close()
    assert_nothing_leaked()


class _RacingSubscription:
    """Stands in for a pull subscription whose fetch ends in nats-py's plain
    asyncio.TimeoutError: nats-py raises it when the server's "request timeout" status
    arrives within the last 0.1 ms before the fetch deadline, a race a test against the
    real server cannot produce on demand. The first call returns real messages."""

    def __init__(self, first: list[Msg]) -> None:
        self.first: list[Msg] | None = first

    async def fetch(self, batch: int, **_: object) -> list[Msg]:
        if self.first is not None:
            first, self.first = self.first, None
            return first[:batch]
        raise TimeoutError


async def test_fetch_returns_what_arrived_when_nats_raises_a_plain_timeout(
    js: JetStreamContext, stream: str
) -> None:
    prefix = subjects_of(stream)
    await ensure_stream(js, stream, [f"{prefix}.>"])
    await js.publish(f"{prefix}.a", b"{}", headers={MSG_ID_HEADER: "m1"})
    delivered = await stored(js, stream, 1)
    subscription: Any = _RacingSubscription(delivered)
    assert await fetch(subscription, 5, max_wait=1) == delivered


async def test_header_name_nats_cannot_carry_fails_that_message(
    js: JetStreamContext, stream: str
) -> None:
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(URL, stream=stream, subjects=[f"{prefix}.>"])
    good, bad = make_messages(f"{prefix}.a", 2, keys=[None])
    bad = type(bad)(id=bad.id, topic=bad.topic, payload=1, headers={"x:colon": "v"})
    try:
        outcomes = await broker.publish_batch([good, bad])
    finally:
        await broker.close()
    assert outcomes[0] is None
    assert isinstance(outcomes[1], PublishError)
    assert bad.id in str(outcomes[1])


def test_stream_options_are_checked() -> None:
    with pytest.raises(ConfigurationError, match="needs `subjects`"):
        NatsJetStreamBroker(URL, stream="S")
    with pytest.raises(ConfigurationError, match="`subjects` needs `stream`"):
        NatsJetStreamBroker(URL, subjects=["a.>"])
    assert NatsJetStreamBroker(URL, stream="S", subject_prefix="app.").subjects == ["app.>"]


async def test_message_without_id_is_malformed(
    client: Client, js: JetStreamContext, stream: str
) -> None:
    prefix = subjects_of(stream)
    await ensure_stream(js, stream, [f"{prefix}.>"])
    await js.publish(f"{prefix}.raw", b"{}")
    [message] = await stored(js, stream, 1)
    with pytest.raises(MalformedMessageError, match="no message id in the Nats-Msg-Id header"):
        message_id_of(message)


async def test_concurrent_batches_share_one_connection(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
    js: JetStreamContext,
    stream: str,
) -> None:
    proxy = await make_proxy(NATS)
    prefix = subjects_of(stream)
    broker = NatsJetStreamBroker(
        f"nats://127.0.0.1:{proxy.port}", stream=stream, subjects=[f"{prefix}.>"]
    )
    batches = [make_messages(f"{prefix}.b{n}", 50) for n in range(4)]
    try:
        results = await asyncio.gather(*(broker.publish_batch(batch) for batch in batches))
    finally:
        await broker.close()
    assert all(list(outcomes) == [None] * 50 for outcomes in results)
    assert proxy.connections == 1
    assert (await js.stream_info(stream)).state.messages == 200
