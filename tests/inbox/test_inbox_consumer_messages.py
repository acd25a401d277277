"""The consumers on each real broker, in-process: unreadable messages (no id, a payload
that is not JSON, an id too long for the inbox) are rejected and reported without
blocking the messages behind them; a handler that fails is retried until it commits;
every good message is processed once and everything ends acknowledged. Plus the
consumers' configuration errors (no server needed)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.errors import ConfigurationError
from sagaz.outbox.consumers import BrokerConsumer, consume, consumer_from_url
from sagaz.outbox.inbox import InvalidInboxKeyError
from tests.brokers.broker_helpers import TcpProxy
from tests.brokers.conftest import NATS, RABBITMQ, REDIS, make_proxy
from tests.conftest import DatabaseUrls
from tests.inbox.consumer_handlers import app_metadata, effects, record
from tests.inbox.consumer_sides import GROUP, SIDES, payload
from tests.relay.relay_helpers import eventually

__all__ = ["make_proxy"]  # the fixture

ROOT = Path(__file__).resolve().parents[2]

ADDRESSES = {"redis": REDIS, "nats": NATS, "rabbitmq": RABBITMQ}


@pytest.fixture
async def engine(pg: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    engine = pg.async_engine()
    async with engine.begin() as connection:
        await connection.run_sync(app_metadata.create_all)
    yield engine
    await engine.dispose()


async def effect_counts(engine: AsyncEngine) -> dict[int, int]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.select(effects.c.n, sa.func.count()).group_by(effects.c.n)
        )
        return dict(rows.all())


@contextlib.asynccontextmanager
async def running(consumer: BrokerConsumer) -> AsyncIterator[None]:
    task = asyncio.ensure_future(consumer.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize("broker", sorted(SIDES))
async def test_unreadable_messages_are_rejected_and_a_failing_handler_is_retried(
    engine: AsyncEngine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker: str
) -> None:
    monkeypatch.setenv("SAGAZ_TEST_FAIL_ONCE", "1")
    monkeypatch.setenv("SAGAZ_TEST_MARKER", str(tmp_path / "marker"))
    side = SIDES[broker](uuid.uuid4().hex[:12])
    await side.prepare()
    rejected: list[tuple[BaseException, Any]] = []
    try:
        await side.publish_raw(payload(0), str(uuid.uuid4()))
        await side.publish_raw(payload(100), None)  # no id (RabbitMQ: a hostile one)
        await side.publish_raw(payload(1), str(uuid.uuid4()))  # its handler fails once
        await side.publish_raw(b"{not json", str(uuid.uuid4()))
        await side.publish_raw(payload(101), "x" * 300)  # too long for the inbox
        await side.publish_raw(payload(2), str(uuid.uuid4()))
        consumer = consumer_from_url(
            side.url,
            side.topic,
            GROUP,
            record,
            engine,
            on_malformed=lambda error, raw: rejected.append((error, raw)),
        )
        async with running(consumer):

            async def done() -> bool:
                stats = consumer.stats
                return stats.processed == 3 and stats.malformed == 3 and await side.settled()

            await eventually(done, within=30, every=0.05)
        assert await side.settled()
    finally:
        await side.teardown()
    assert await effect_counts(engine) == {0: 1, 1: 1, 2: 1}
    assert (consumer.stats.failed, consumer.stats.duplicates) == (1, 0)
    reasons = [str(error) for error, _raw in rejected]
    assert len(reasons) == 3
    assert "no message id" in reasons[0] or "control characters" in reasons[0]
    assert "not UTF-8 JSON" in reasons[1]
    assert isinstance(rejected[2][0], InvalidInboxKeyError)
    assert all(raw is not None for _error, raw in rejected)


async def test_consume_runs_until_cancelled(engine: AsyncEngine) -> None:
    side = SIDES["redis"](uuid.uuid4().hex[:12])
    try:
        await side.publish_raw(payload(7), str(uuid.uuid4()))
        task = asyncio.ensure_future(consume(side.url, side.topic, GROUP, record, engine))
        await eventually(lambda: effect_counts_is(engine, {7: 1}), within=30, every=0.05)
        await eventually(side.settled, within=10, every=0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    finally:
        await side.teardown()


async def effect_counts_is(engine: AsyncEngine, expected: dict[int, int]) -> bool:
    return await effect_counts(engine) == expected


@pytest.mark.parametrize(
    ("url", "options", "match"),
    [
        ("http://h/", {}, "consumer URL has an unknown broker URL scheme 'http://'"),
        ("nohost", {}, "consumer URL must look like scheme://"),
        ("memory://", {}, "there is no consumer for memory://"),
        ("redis://h/0?min_idle=soon", {}, "min_idle='soon'"),
        ("redis://h/0", {"claim_interval": 0}, "claim_interval > 0"),
        ("redis://h/0", {"bogus": 1}, "unexpected keyword argument 'bogus'"),
        ("nats://h:4222", {"group": "bill.ing"}, "cannot name a durable consumer"),
        ("nats://h:4222?ack_wait=0", {}, "ack_wait > 0"),
        ("nats://h:4222", {"max_deliver": 0}, "max_deliver must be >= 1"),
        ("amqp://h/?exchange=", {}, "the default exchange cannot be bound"),
        ("amqp://h/", {"prefetch": 0}, "prefetch >= 1"),
        ("kafka://h:9092", {"batch_size": 0}, "batch_size >= 1"),
        ("redis://h/0", {"retry_delay": -1}, "retry_delay and reconnect_delay"),
        ("redis://h/0", {"topic": ""}, "topic must be a non-empty str"),
    ],
)
def test_bad_configuration_is_refused_before_connecting(
    url: str, options: dict[str, Any], match: str
) -> None:
    group = options.pop("group", GROUP)
    topic = options.pop("topic", "orders")
    with pytest.raises(ConfigurationError, match=match):
        consumer_from_url(url, topic, group, record, sa_sessions(), **options)


def test_a_group_the_inbox_cannot_store_is_refused() -> None:
    with pytest.raises(InvalidInboxKeyError, match="consumer must be 1 to 200"):
        consumer_from_url("redis://h/0", "orders", "g" * 201, record, sa_sessions())


def sa_sessions() -> Any:
    from sqlalchemy.ext.asyncio import async_sessionmaker

    return async_sessionmaker()


async def test_redis_entry_deleted_while_pending_is_acknowledged(engine: AsyncEngine) -> None:
    """An entry its consumer received and never acknowledged, then trimmed from the stream:
    the restarted consumer re-reads its pending list, finds no fields, acknowledges it."""
    side = SIDES["redis"](uuid.uuid4().hex[:12])
    client = side.client  # type: ignore[attr-defined]
    try:
        await side.publish_raw(payload(1), str(uuid.uuid4()))
        await client.xgroup_create(side.topic, GROUP, id="0")
        entries: Any = await client.xreadgroup(GROUP, "c1", {side.topic: ">"}, count=1)
        await client.xdel(side.topic, entries[0][1][0][0])
        await side.publish_raw(payload(2), str(uuid.uuid4()))
        consumer = consumer_from_url(side.url, side.topic, GROUP, record, engine, name="c1")
        async with running(consumer):

            async def done() -> bool:
                return consumer.stats.processed == 1 and await side.settled()

            await eventually(done, within=30, every=0.05)
        assert consumer.stats.malformed == 1
        assert await effect_counts(engine) == {2: 1}
    finally:
        await side.teardown()


def test_kafka_consumer_holds_back_a_rewound_partition() -> None:
    """No Kafka server here: only the order logic is checked. After a record's handler
    failed (its partition rewound), that partition's later records of the same fetch are
    not handed out; other partitions' are."""
    from aiokafka import TopicPartition

    from sagaz.outbox.consumers.kafka import KafkaConsumer

    consumer = consumer_from_url("kafka://h:9092", "orders", GROUP, record, sa_sessions())
    assert isinstance(consumer, KafkaConsumer)
    assert consumer.options["enable_auto_commit"] is False
    zero, one = TopicPartition("orders", 0), TopicPartition("orders", 1)
    fetched = {zero: ["a0", "a1", "a2"], one: ["b0", "b1"]}
    handed: list[str] = []
    for delivery in consumer._in_order(fetched):  # type: ignore[arg-type]
        handed.append(delivery.raw)
        if delivery.raw == "a1":
            consumer.rewound.add(zero)
    assert handed == ["a0", "a1", "b0", "b1"]


@pytest.mark.parametrize("broker", sorted(SIDES))
async def test_consumer_reconnects_after_its_connection_is_cut(
    engine: AsyncEngine, make_proxy: Callable[[tuple[str, int]], Awaitable[TcpProxy]], broker: str
) -> None:
    side = SIDES[broker](uuid.uuid4().hex[:12])
    await side.prepare()
    address = ADDRESSES[broker]
    proxy = await make_proxy(address)
    url = side.url.replace(f"{address[0]}:{address[1]}", f"127.0.0.1:{proxy.port}")
    consumer = consumer_from_url(url, side.topic, GROUP, record, engine, reconnect_delay=0.1)
    try:
        async with running(consumer):
            await side.publish_raw(payload(0), str(uuid.uuid4()))
            await eventually(lambda: consumer.stats.processed == 1, within=30, every=0.05)
            proxy.drop()
            await side.publish_raw(payload(1), str(uuid.uuid4()))
            await eventually(lambda: consumer.stats.reconnects >= 1, within=30, every=0.05)
            proxy.restore()
            await eventually(lambda: consumer.stats.processed == 2, within=30, every=0.05)
        assert await side.settled()
    finally:
        await side.teardown()
    assert await effect_counts(engine) == {0: 1, 1: 1}


def test_the_relays_url_fits_the_consumer() -> None:
    """The broker's own URL options are accepted and ignored; the consumer's are read;
    others stay in the URL for the client library (NATS refuses unknown ones)."""
    redis = consumer_from_url(
        "redis://h/0?maxlen=5&min_idle=3&health_check_interval=30",
        "t",
        GROUP,
        record,
        sa_sessions(),
    )
    assert (redis.url, redis.min_idle) == ("redis://h/0?health_check_interval=30", 3.0)  # type: ignore[attr-defined]
    nats = consumer_from_url(
        "nats://h:4222?stream=S&subjects=a.>&ack_wait=4", "a.b", GROUP, record, sa_sessions()
    )
    assert (nats.stream, nats.ack_wait, nats.servers) == ("S", 4.0, ["nats://h:4222"])  # type: ignore[attr-defined]
    rabbit = consumer_from_url(
        "amqp://h/?confirm_timeout=3&prefetch=7", "t", GROUP, record, sa_sessions(), prefetch=9
    )
    assert (rabbit.prefetch, rabbit.queue) == (9, GROUP)  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError, match="unknown option"):
        consumer_from_url("nats://h:4222?bogus=1", "t", GROUP, record, sa_sessions())


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--handler", "tests.inbox.consumer_handlers:nope"], "has no function nope"),
        (["--handler", "no_such_module_x:f"], "cannot import no_such_module_x"),
        (["--broker", "nats://h:4222?ack_wait=-1"], "need ack_wait > 0"),
        (["--broker", "ftp://h/"], "unknown broker URL scheme 'ftp://'"),
    ],
)
def test_the_process_exits_2_naming_a_configuration_error(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    defaults = {
        "--broker": "redis://127.0.0.1:6379/0",
        "--topic": "t",
        "--group": GROUP,
        "--handler": "tests.inbox.consumer_handlers:record",
        "--database": f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
    }
    defaults.update(zip(arguments[::2], arguments[1::2], strict=True))
    completed = subprocess.run(
        [sys.executable, "-m", "sagaz.outbox.consumers", *itertools.chain(*defaults.items())],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr


async def test_nats_terminates_a_message_that_failed_max_deliver_times(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("SAGAZ_TEST_FAIL_ALWAYS", "1")
    side = SIDES["nats"](uuid.uuid4().hex[:12])
    await side.prepare()
    try:
        for n in range(3):
            await side.publish_raw(payload(n), str(uuid.uuid4()))
        consumer = consumer_from_url(side.url, side.topic, GROUP, record, engine, max_deliver=2)
        async with running(consumer):

            async def done() -> bool:
                return consumer.stats.processed == 2 and await side.settled()

            await eventually(done, within=30, every=0.05)
        assert consumer.stats.failed == 2
    finally:
        await side.teardown()
    assert await effect_counts(engine) == {0: 1, 2: 1}
    assert "gave up on a message after 2 deliveries" in caplog.text
    retried = [r for r in caplog.records if "will be delivered again" in r.getMessage()]
    assert len(retried) == 2
    assert all(r.getMessage().split()[4] == r.event_id for r in retried)  # type: ignore[attr-defined]
