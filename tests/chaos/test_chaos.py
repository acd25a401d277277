"""The chaos run of issue 11, in the suite: sagaz keeps its promises while workers are
SIGKILLed every 2-3 s and paused past their lease, PostgreSQL crash-restarts, the broker
connections are cut and the consumer is killed.

The system: PostgreSQL on a cluster of the test's own (so the restart disturbs no other
test), 3 `sagaz worker` processes (sagas and relay, 2 s leases, default --max-attempts)
publishing to NATS JetStream through a TCP proxy, one consumer process reading the
events into PostgreSQL with the inbox, and the application (this test) committing
600 sagas with a transactional step and 3,000 events of its own (plus one per saga)
while the chaos goes on, and more events after it.

The promises, checked from the databases once everything settled (tests/chaos/ledger.py):
0 sagas lost or stuck, 0 healthy sagas failed, 0 transactional effects doubled, 0
plain-step effects written after their compensation, 0 events lost, 0 processed twice,
every event published within 10 s of its commit - or of the end of the chaos, for the
events committed during it. The ledger is printed whatever the outcome.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
import sqlalchemy as sa
from nats.js.api import StreamConfig
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.store.engines import create_async_engine
from sagaz.store.schema import metadata, outbox, sagas
from tests.brokers.broker_helpers import TcpProxy
from tests.brokers.conftest import NATS, require_server
from tests.chaos.chaos_sagas import (
    SAGA_NAME,
    app_metadata,
    consumed,
    effect_ledger_ddl,
    effect_ledger_env,
)
from tests.chaos.cluster import Cluster
from tests.chaos.consumer import durable_config
from tests.chaos.ledger import ChaosLog, collect
from tests.chaos.processes import Consumer, Workers
from tests.chaos.scenario import Schedule, run_chaos
from tests.chaos.targets import Targets
from tests.chaos.workload import Producer
from tests.conftest import DatabaseUrls

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

LEASE_SECONDS = 2.0
WORKERS = 3
SAGAS = 600
EVENTS = 3000
#: The application keeps committing events this long after the chaos.
TAIL_SECONDS = 5.0
TAIL_EVENTS = 200
SETTLE_SECONDS = 75.0
SEED = 11


@pytest.fixture
async def chaos_db(chaos_cluster: Cluster) -> AsyncIterator[AsyncEngine]:
    """sagaz's tables and the application's on the chaos cluster (recreated per test)."""
    engine = create_async_engine(chaos_cluster.url, pool_pre_ping=True)
    async with engine.begin() as connection:
        for tables in (metadata, app_metadata):
            await connection.run_sync(tables.drop_all)
            await connection.run_sync(tables.create_all)
    yield engine
    await engine.dispose()


@pytest.fixture
async def effects_db(pg_empty: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    """The effect ledger (a downstream service) on the stable main PostgreSQL."""
    engine = create_async_engine(pg_empty.async_)
    async with engine.begin() as connection:
        for statement in effect_ledger_ddl(str(pg_empty.schema)):
            await connection.execute(sa.text(statement))
    yield engine
    await engine.dispose()


@pytest.fixture
async def stream() -> AsyncIterator[tuple[str, str]]:
    """A JetStream stream of the test's own with the consumer's durable; deleted after."""
    require_server("NATS", NATS)
    token = uuid.uuid4().hex[:10]
    name, prefix = f"CHAOS_{token}", f"chaos_{token}"
    client = await nats.connect(f"nats://{NATS[0]}:{NATS[1]}")
    js = client.jetstream()
    await js.add_stream(StreamConfig(name=name, subjects=[f"{prefix}.>"]))
    await js.add_consumer(name, durable_config("chaos"))
    try:
        yield name, prefix
    finally:
        await js.delete_stream(name)
        await client.close()


def worker_arguments(database_url: str, broker_url: str) -> list[str]:
    """`sagaz worker` options: 2 s saga leases, everything else (--max-attempts, the
    relay's 5 s claim) at its default."""
    return [
        "--url", database_url, "--import", "tests.chaos.chaos_sagas",
        "--broker-url", broker_url, "--lease-seconds", str(LEASE_SECONDS),
        "--poll-interval", "0.2", "--shutdown-grace", "1", "--log-level", "WARNING",
    ]  # fmt: skip


async def scalar(engine: AsyncEngine, query: sa.Executable) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(query)).scalar() or 0)


async def wait_for(check: object, seconds: float, what: str) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if await check():  # type: ignore[operator]
                return True
        except Exception:  # the database coming back
            pass
        await asyncio.sleep(0.5)
    print(f"chaos: gave up waiting for {what} after {seconds} s")
    return False


async def test_chaos_run_keeps_every_promise(
    chaos_cluster: Cluster,
    chaos_db: AsyncEngine,
    effects_db: AsyncEngine,
    pg_empty: DatabaseUrls,
    stream: tuple[str, str],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    began = time.monotonic()
    stream_name, prefix = stream
    rng = random.Random(SEED)
    proxy = TcpProxy(NATS)
    await proxy.start()
    broker_url = (
        f"nats://127.0.0.1:{proxy.port}?stream={stream_name}&subjects={prefix}.>"
        "&ack_timeout=3&connect_timeout=2"
    )
    environment = effect_ledger_env(pg_empty.sync, str(pg_empty.schema))
    workers = Workers(
        tmp_path, environment, worker_arguments(chaos_cluster.url, broker_url), WORKERS, rng
    )
    consumer = Consumer(
        tmp_path, {}, [chaos_cluster.url, f"nats://{NATS[0]}:{NATS[1]}", stream_name, "chaos"]
    )
    producer = Producer(chaos_db, prefix)
    chaos = ChaosLog(lease_seconds=LEASE_SECONDS)
    listening = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%sagaz_sagas%'"
    )
    try:
        workers.start_all()
        consumer.start()
        assert await wait_for(
            lambda: _equals(scalar(chaos_db, listening), WORKERS), 60, "the workers to start"
        )
        production = asyncio.create_task(producer.run(Schedule.seconds - 2, SAGAS, EVENTS))
        await run_chaos(
            Schedule(), chaos, workers=workers, consumer=consumer, proxy=proxy,
            cluster=chaos_cluster, targets=Targets(chaos_db, effects_db, str(pg_empty.schema)),
            rng=rng,
        )  # fmt: skip
        await production
        await producer.run(TAIL_SECONDS, 0, TAIL_EVENTS, first_event=EVENTS)
        await wait_for(lambda: _settled(chaos_db, producer), SETTLE_SECONDS, "the run to settle")
    finally:
        workers.terminate_all()
        consumer.terminate_all()
        await proxy.close()
    ledger = await collect(chaos_db, effects_db, str(pg_empty.schema), producer, chaos,
                           workers.log_text())  # fmt: skip
    ledger.counts["run time (s)"] = round(time.monotonic() - began, 1)
    ledger.counts["chaos cluster"] = (
        f"{chaos_cluster.version} {chaos_cluster.name} :{chaos_cluster.port}"
    )
    with capsys.disabled():
        print(ledger.render())
    failures = ledger.failures()
    assert not failures, "broken promises:\n" + "\n".join(failures)


async def _equals(value: object, expected: int) -> bool:
    return await value == expected  # type: ignore[misc]


async def _settled(engine: AsyncEngine, producer: Producer) -> bool:
    """Every saga the application committed is finished and every event processed."""
    done = await scalar(
        engine,
        sa.select(sa.func.count())
        .select_from(sagas)
        .where(
            sagas.c.name == SAGA_NAME, sagas.c.status.in_(("completed", "compensated", "failed"))
        ),
    )
    events = await scalar(engine, sa.select(sa.func.count()).select_from(outbox))
    processed = await scalar(engine, sa.select(sa.func.count(sa.distinct(consumed.c.message_id))))
    unpublished = await scalar(
        engine,
        sa.select(sa.func.count()).select_from(outbox).where(outbox.c.published_at.is_(None)),
    )
    expected_events = len(producer.events) + len(producer.sagas)
    return (
        done == len(producer.sagas)
        and events >= expected_events
        and processed == events
        and unpublished == 0
    )
