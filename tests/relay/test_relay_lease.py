"""The relay's claim is a short lease: a `sagaz worker` relay SIGKILLed in the middle of
publishing a batch leaves its events to another relay within about that lease (it was a
fixed 30 s), and the option and variable that set it reach the relay."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import outbox
from tests.brokers.broker_helpers import TcpProxy
from tests.brokers.conftest import require_server
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually, rows

ROOT = Path(__file__).resolve().parents[2]
LEASE = 1.0
REDIS = ("127.0.0.1", 6379)


@pytest.fixture
async def stalling_redis() -> AsyncIterator[TcpProxy]:
    """A proxy in front of the local Redis; `stall()` makes it a server stuck in the
    middle of a publish."""
    require_server("Redis", REDIS)
    proxy = TcpProxy(REDIS)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()


async def test_events_of_a_relay_killed_mid_batch_are_published_again_within_the_lease(
    pg: DatabaseUrls, stalling_redis: TcpProxy
) -> None:
    engine = pg.sync_engine()
    command = [
        sys.executable, "-m", "sagaz", "worker", "--url", pg.url, "--no-sagas",
        "--broker-url", f"redis://127.0.0.1:{stalling_redis.port}?socket_timeout=120",
        "--poll-interval", "0.1", "--log-level", "ERROR",
    ]  # fmt: skip
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SAGAZ_RELAY_LEASE_SECONDS": str(LEASE)}
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, env=environment)
    relay: OutboxRelay | None = None
    task: asyncio.Task[None] | None = None
    try:
        # A first event goes through: the worker is connected and relaying.
        add_events(engine, [("sagaz-lease-test", {"warm-up": True}, None)])
        await eventually(lambda: rows(engine)[0].status == "published", within=60)
        stalling_redis.stall()
        ids = add_events(engine, [("sagaz-lease-test", {"n": n}, f"k{n % 3}") for n in range(6)])

        def claimed() -> bool:
            """Some event is under a claim that has not expired."""
            query = sa.select(outbox.c.claim_owner).where(
                outbox.c.claim_owner.is_not(None), outbox.c.claim_expires_at > sa.func.now()
            )
            with engine.connect() as connection:
                return connection.execute(query).first() is not None

        # The worker claimed a batch and is stuck publishing it (renewing its claim).
        await eventually(claimed, within=60, every=0.05)
        await asyncio.sleep(2 * LEASE)  # past the first lease: only renewals keep it now
        assert claimed(), "the stuck relay's claim was not renewed"
        process.send_signal(signal.SIGKILL)
        await asyncio.wait_for(process.wait(), 30)
        killed_at = time.monotonic()

        broker = InMemoryBroker()
        relay = OutboxRelay(pg.async_engine(), broker, poll_interval=0.05, listen=False)
        task = asyncio.create_task(relay.run_until_stopped())
        await eventually(
            lambda: {row.status for row in rows(engine)} == {"published"}, within=LEASE + 30
        )
        taken_over_after = time.monotonic() - killed_at
        assert sorted(set(broker.ids())) == sorted(ids)
        # Not a timing measurement: the bound is the lease plus a generous margin, far
        # below the fixed 30 s claim this replaces.
        assert taken_over_after < LEASE + 5, f"republished {taken_over_after:.1f}s after the kill"
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        if relay is not None and task is not None:
            relay.stop()
            await task
            await relay.engine.dispose()
        engine.dispose()


async def test_the_relay_lease_defaults_to_a_few_seconds(sqlite: DatabaseUrls) -> None:
    engine = sqlite.async_engine()
    assert OutboxRelay(engine, InMemoryBroker()).claim_seconds == 5.0
    await engine.dispose()
