"""Kafka broker. No Kafka server runs on the development machine: the round-trip tests run
against a real broker only when SAGAZ_TEST_KAFKA=host:port is set."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from sagaz.outbox.brokers import BrokerConnectionError
from sagaz.outbox.brokers.kafka import KafkaBroker, decode, message_id_of
from tests.brokers.broker_helpers import (
    TcpProxy,
    assert_nothing_leaked,
    assert_prefix_per_key,
    closed_port,
    make_messages,
)

KAFKA = os.environ.get("SAGAZ_TEST_KAFKA")
needs_kafka = pytest.mark.skipif(not KAFKA, reason="set SAGAZ_TEST_KAFKA=host:port to run")


async def test_unreachable_server_is_reported_not_raised() -> None:
    port = closed_port()
    broker = KafkaBroker(f"127.0.0.1:{port}", request_timeout_ms=2000)
    outcomes = await broker.publish_batch(make_messages("orders", 3))
    assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
    assert f"kafka: cannot connect to 127.0.0.1:{port}: KafkaConnectionError" in str(outcomes[0])
    assert not broker.connected
    await broker.close()
    assert_nothing_leaked()


async def test_failed_connect_raises_connection_error_naming_the_servers() -> None:
    port = closed_port()
    broker = KafkaBroker.from_url(f"kafka://127.0.0.1:{port}?client_id=orders")
    with pytest.raises(BrokerConnectionError, match=f"kafka: cannot connect to 127.0.0.1:{port}"):
        await broker.connect()
    assert not broker.connected
    await broker.close()
    assert_nothing_leaked()


async def consume(topic: str, count: int) -> list[object]:
    assert KAFKA is not None
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=KAFKA, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[object] = []
    try:
        async with asyncio.timeout(30):
            while len(records) < count:
                batch = await consumer.getmany(timeout_ms=500)
                for partition_records in batch.values():
                    records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


async def delete_topic(topic: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=KAFKA)
    await admin.start()
    try:
        await admin.delete_topics([topic])
    except Exception:  # the topic may not exist (auto-creation off)
        pass
    finally:
        await admin.close()


@needs_kafka
async def test_batch_arrives_intact_and_in_key_order() -> None:
    assert KAFKA is not None
    topic = f"sagaz-test-{uuid.uuid4().hex[:12]}"
    broker = KafkaBroker(KAFKA)
    messages = make_messages(topic, 200)
    try:
        outcomes = await broker.publish_batch(messages)
        assert list(outcomes) == [None] * 200
        records = await consume(topic, 200)
    finally:
        await broker.close()
        await delete_topic(topic)
    by_id = {message_id_of(record): decode(record) for record in records}
    assert set(by_id) == {m.id for m in messages}
    for sent in messages:
        got = by_id[sent.id]
        assert got.payload == sent.payload
        assert got.key == sent.key
        assert got.correlation_id == sent.headers["correlation-id"]
        assert got.headers["x-tenant"] == "acme"
    for key in {m.key for m in messages if m.key is not None}:
        sent_ids = [m.id for m in messages if m.key == key]
        assert [message_id_of(r) for r in records if decode(r).key == key] == sent_ids


@needs_kafka
async def test_cut_connection_reports_failures_then_reconnects(
    make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]],
) -> None:
    assert KAFKA is not None
    host, _, port = KAFKA.rpartition(":")
    proxy = await make_proxy((host, int(port)))
    topic = f"sagaz-test-{uuid.uuid4().hex[:12]}"
    # Only the bootstrap connection goes through the proxy; Kafka then hands out the
    # advertised listener, so this checks failure reporting at connect time.
    broker = KafkaBroker(f"127.0.0.1:{proxy.port}", request_timeout_ms=3000)
    try:
        proxy.drop()
        messages = make_messages(topic, 20)
        outcomes = await broker.publish_batch(messages)
        assert all(isinstance(outcome, BrokerConnectionError) for outcome in outcomes)
        assert_prefix_per_key(messages, outcomes)
        proxy.restore()
        assert list(await broker.publish_batch(messages)) == [None] * 20
    finally:
        await broker.close()
        await delete_topic(topic)
