"""The claim reads a bounded window, not the backlog: its PostgreSQL plan on a 100,000-event
table that was never analysed walks the pending index (no sequential or bitmap scan of
the outbox, bounded row counts), a key's head outside the window is still found, and
events waiting behind a head that backs off are moved out of the window's way - per-key
order kept throughout."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox import claims
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually, rows

BACKLOG = 100_000
LIMIT = 500


def claim(sync_engine: sa.Engine, owner: str, *, limit: int) -> list[int]:
    now = datetime.now(UTC)
    with sync_engine.begin() as connection:
        events = claims.claim_batch(
            connection, owner=owner, limit=limit, now=now, expires=now + timedelta(seconds=30)
        )
    return [event.seq for event in events]


def defer(sync_engine: sa.Engine, *, window: int) -> int:
    with sync_engine.begin() as connection:
        return claims.defer_blocked(connection, now=datetime.now(UTC), window=window)


def set_due(sync_engine: sa.Engine, seq: int, at: datetime) -> None:
    with sync_engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE sagaz_outbox SET next_attempt_at = :at WHERE seq = :seq"),
            {"at": at, "seq": seq},
        )


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.parametrize(("backlog", "keys"), [(BACKLOG, 1000), (BACKLOG, 16), (3000, 16)])
def test_the_claim_plan_on_an_unanalysed_backlog_walks_the_index(
    pg: DatabaseUrls, backlog: int, keys: int
) -> None:
    sync_engine = pg.sync_engine()
    try:
        with sync_engine.begin() as connection:
            # A burst into a new table: 100,000 pending events over 1,000 keys (or 16:
            # long runs of followers; or 3,000 events, where an estimate from the table's
            # few pages once chose a plan that re-ran the choice for every pending
            # event), and no ANALYZE (autovacuum may be off, as here).
            connection.execute(
                sa.text(
                    "INSERT INTO sagaz_outbox (id, topic, key, payload, headers, status, "
                    "attempts, next_attempt_at, created_at) "
                    "SELECT gen_random_uuid(), 't', 'k' || (g % :keys), '{\"n\": 1}', '{}', "
                    "'pending', 0, now() - interval '1 hour' + g * interval '1 millisecond', "
                    "now() FROM generate_series(1, :count) g"
                ),
                {"count": backlog, "keys": keys},
            )
            assert connection.scalar(
                sa.text("SELECT reltuples FROM pg_class WHERE relname = 'sagaz_outbox'")
            ) in (-1, 0)  # never analysed
        with sync_engine.connect() as connection, connection.begin() as transaction:
            [document] = claims.explain_claim(connection, now=datetime.now(UTC), limit=LIMIT)
            transaction.rollback()
        nodes = list(
            plan_nodes(
                (document if isinstance(document, list) else json.loads(document))[0]["Plan"]
            )
        )
        on_outbox = [node for node in nodes if node.get("Relation Name") == "sagaz_outbox"]
        kinds = {node["Node Type"] for node in on_outbox}
        assert "Seq Scan" not in kinds, kinds
        assert "Bitmap Heap Scan" not in kinds, kinds
        window_scans = [node for node in on_outbox if node.get("Alias") == "win_scan"]
        assert [node["Index Name"] for node in window_scans] == ["ix_sagaz_outbox_pending"]
        # Every scan of the outbox reads a bounded number of rows: the window, the
        # probes of its keys, the batch - not the 100,000 pending events.
        for node in on_outbox:
            assert node["Actual Rows"] * node["Actual Loops"] <= 4 * LIMIT, node
        # ... and no join re-runs the choice for each pending event (as `seq IN (...)`
        # without statistics did: O(backlog x batch)).
        for node in nodes:
            assert node.get("Rows Removed by Join Filter", 0) <= 4 * LIMIT, node["Node Type"]
        claimed = next(node for node in nodes if node["Node Type"] == "ModifyTable")
        assert claimed["Actual Rows"] == LIMIT
    finally:
        sync_engine.dispose()


def test_a_head_outside_the_window_is_claimed(sync_engine: sa.Engine) -> None:
    add_events(sync_engine, [("t", n, "a") for n in range(3)])
    now = datetime.now(UTC)
    # The head is due later than its followers (it was retried): the window (2 events
    # for a batch of 1) holds only followers, blocked by it.
    set_due(sync_engine, 1, now - timedelta(seconds=1))
    set_due(sync_engine, 2, now - timedelta(minutes=2))
    set_due(sync_engine, 3, now - timedelta(minutes=1))
    assert claim(sync_engine, "one", limit=1) == [1]
    assert claim(sync_engine, "two", limit=5) == []


def test_events_behind_a_backing_off_head_are_deferred_out_of_the_window(
    sync_engine: sa.Engine,
) -> None:
    # seq: 1-5 key a (1 is backing off), 6 unkeyed
    add_events(sync_engine, [("t", n, "a") for n in range(5)] + [("t", 5, None)])
    retry_at = datetime.now(UTC) + timedelta(minutes=5)
    set_due(sync_engine, 1, retry_at)
    assert claim(sync_engine, "one", limit=1) == []  # the window (2, 3) is blocked by 1
    assert defer(sync_engine, window=2) == 2
    assert claim(sync_engine, "one", limit=1) == []  # now (4, 5)
    assert defer(sync_engine, window=2) == 2
    assert claim(sync_engine, "one", limit=1) == [6]
    assert defer(sync_engine, window=2) == 0
    stored = {row.seq: row for row in rows(sync_engine)}
    assert {stored[seq].next_attempt_at.replace(tzinfo=UTC) for seq in (2, 3, 4, 5)} == {
        retry_at.replace(microsecond=retry_at.microsecond)
    }
    # Once the head is due, the key goes out in order.
    past = datetime.now(UTC) - timedelta(seconds=1)
    for seq in range(1, 6):
        set_due(sync_engine, seq, past)
    assert claim(sync_engine, "two", limit=10) == [1, 2, 3, 4, 5]


async def test_a_relay_gets_past_a_key_stuck_behind_a_failed_event(
    sync_engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(sync_engine, [("t", n, "a") for n in range(6)] + [("t", 6, None)])
    set_due(sync_engine, 1, datetime.now(UTC) + timedelta(minutes=5))
    broker = InMemoryBroker()
    relay = OutboxRelay(async_engine, broker, batch_size=1, poll_interval=30, listen=False)
    task = asyncio.create_task(relay.run_until_stopped())
    try:
        await eventually(lambda: broker.ids() == [ids[6]])
    finally:
        relay.stop()
        await task
    assert [row.status for row in rows(sync_engine)] == ["pending"] * 6 + ["published"]
