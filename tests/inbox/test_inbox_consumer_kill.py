"""A consumer process SIGKILLed before it acknowledged loses nothing and doubles nothing,
on each real broker (Redis Streams, NATS JetStream, RabbitMQ) with PostgreSQL.

Events are published through the outbox relay. Consumer processes
(`python -m sagaz.outbox.consumers`) then take turns:
  1. "c1" processes a few messages and is killed inside the handler of message 3, its
     row written but not committed (received, not committed: must be delivered again);
  2. "c2" is killed right after the commit of message 10, before acknowledging it
     (committed, not acknowledged: delivered again, the inbox must skip it); on Redis it
     can only get c1's pending entries by claiming them (XAUTOCLAIM);
  3. a new "c2" finishes (on Redis it re-reads its own pending entries).
Every event's effect row exists exactly once, and the broker has nothing unacknowledged.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import inbox
from tests.conftest import DatabaseUrls
from tests.inbox.consumer_handlers import app_metadata, effects
from tests.inbox.consumer_sides import GROUP, SIDES, Side
from tests.relay.relay_helpers import add_events, eventually

ROOT = Path(__file__).resolve().parents[2]
EVENTS = 30


class Consumers:
    """`python -m sagaz.outbox.consumers` processes, each logging to its own file."""

    def __init__(self, side: Side, database_url: str, tmp_path: Path) -> None:
        self.side = side
        self.database_url = database_url
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, **holds: str) -> tuple[subprocess.Popen[bytes], Path]:
        marker = self.tmp_path / f"marker-{len(self.processes)}"
        command = [
            sys.executable, "-m", "sagaz.outbox.consumers",
            "--broker", self.side.url, "--topic", self.side.topic, "--group", GROUP,
            "--handler", "tests.inbox.consumer_handlers:record",
            "--database", self.database_url, "--name", name, "--log-level", "WARNING",
        ]  # fmt: skip
        environment = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "SAGAZ_TEST_MARKER": str(marker),
            **{f"SAGAZ_TEST_{name.upper()}": value for name, value in holds.items()},
        }
        log = (self.tmp_path / f"consumer-{len(self.processes)}.log").open("wb")
        process = subprocess.Popen(command, cwd=ROOT, env=environment, stderr=log)
        log.close()
        self.processes.append(process)
        return process, marker

    async def killed_at(self, process: subprocess.Popen[bytes], marker: Path, what: str) -> None:
        """Wait until the process reached its hold, then SIGKILL it."""

        def reached() -> bool:
            assert process.poll() is None, f"the consumer exited early: {self.logs()}"
            return marker.exists() and marker.read_text() == what

        await eventually(reached, within=60, every=0.02)
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL

    def logs(self) -> str:
        return "\n".join(path.read_text() for path in sorted(self.tmp_path.glob("consumer-*.log")))

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait()


@pytest.fixture
def engine(pg: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = pg.sync_engine()
    app_metadata.create_all(engine)
    yield engine
    engine.dispose()


def effect_counts(engine: sa.Engine) -> dict[int, int]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(effects.c.n, sa.func.count()).group_by(effects.c.n)
        ).all()
    return dict(rows)


async def publish_through_relay(pg: DatabaseUrls, side: Side) -> None:
    async_engine = pg.async_engine()
    broker = side.broker()
    try:
        relay = OutboxRelay(async_engine, broker, listen=False, claim_seconds=5)
        published = 0
        while published < EVENTS:
            result = await relay.relay_once()
            assert result.claimed, "the relay found nothing more to publish"
            published += result.published
    finally:
        await broker.close()
        await async_engine.dispose()


@pytest.mark.parametrize("broker", sorted(SIDES))
async def test_consumer_killed_before_ack_loses_nothing_and_doubles_nothing(
    pg: DatabaseUrls, engine: sa.Engine, tmp_path: Path, broker: str
) -> None:
    side = SIDES[broker](uuid.uuid4().hex[:12])
    await side.prepare()
    consumers = Consumers(side, pg.url, tmp_path)
    try:
        add_events(engine, [(side.topic, {"n": n}, None) for n in range(EVENTS)])
        await publish_through_relay(pg, side)

        first, marker = consumers.start("c1", hold_before_commit="3")
        await consumers.killed_at(first, marker, "before-commit")
        counts = effect_counts(engine)
        assert counts.get(3) is None, "message 3 was held before its commit"
        assert set(counts) <= set(range(3))

        second, marker = consumers.start("c2", hold_after_commit="10")
        await consumers.killed_at(second, marker, "after-commit")
        assert effect_counts(engine).get(10) == 1, "message 10 was held after its commit"

        last, _ = consumers.start("c2")

        async def drained() -> bool:
            return len(effect_counts(engine)) == EVENTS and await side.settled()

        await eventually(drained, within=90, every=0.05)
        last.send_signal(signal.SIGTERM)
        assert last.wait(timeout=30) == 0, consumers.logs()
        assert await side.settled(), "a message was left unacknowledged"
    finally:
        consumers.kill_all()
        await side.teardown()

    assert effect_counts(engine) == dict.fromkeys(range(EVENTS), 1), consumers.logs()
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(inbox)) == EVENTS
    await asyncio.sleep(0)
