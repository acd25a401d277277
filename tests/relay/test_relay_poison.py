"""Rows the relay cannot read fail alone: an outbox row whose headers are not a JSON
object of strings, or whose payload is not JSON (SQLite text written by hand), is
dead-lettered with a reason naming the column while every other event is published. And
a broker error with a NUL character or a lone surrogate is stored escaped as the event's
last error (PostgreSQL refuses both in text)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.claims import decode_row
from sagaz.outbox.maintenance import list_dead
from sagaz.outbox.relay import OutboxRelay, PassResult
from sagaz.store.schema import outbox
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, by_key, rows


def corrupt(sync_engine: sa.Engine, seq: int, column: str, json_text: str) -> None:
    """Write `json_text` into a row by hand, as a person with psql would (valid for a
    JSONB, JSON or TEXT column alike)."""
    with sync_engine.begin() as connection:
        connection.execute(
            sa.text(f"UPDATE sagaz_outbox SET {column} = :text WHERE seq = :seq"),
            {"text": json_text, "seq": seq},
        )


def status_rows(sync_engine: sa.Engine) -> list[sa.Row[Any]]:
    """The rows' state, without the JSON columns (which hold what cannot be decoded)."""
    table = outbox
    with sync_engine.connect() as connection:
        query = sa.select(table.c.seq, table.c.status, table.c.last_error).order_by(table.c.seq)
        return list(connection.execute(query))


async def test_the_dead_letter_listing_shows_unreadable_rows(sqlite: DatabaseUrls) -> None:
    sync_engine = sqlite.sync_engine()
    async_engine = sqlite.async_engine()
    try:
        add_events(sync_engine, [("t", {"n": 0}, None)])
        corrupt(sync_engine, 1, "payload", "{not json")
        await relay_for(async_engine, InMemoryBroker()).relay_once()
        [dead] = list_dead(sync_engine)
        assert (dead.seq, dead.payload, dead.headers) == (1, "{not json", {})
        assert dead.last_error is not None
        assert dead.last_error.startswith("payload is not")
    finally:
        await async_engine.dispose()
        sync_engine.dispose()


def relay_for(async_engine: AsyncEngine, broker: InMemoryBroker) -> OutboxRelay:
    return OutboxRelay(async_engine, broker, listen=False, base_backoff=0.01, max_backoff=0.01)


async def test_rows_with_unreadable_headers_are_dead_lettered_alone(
    sync_engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    # seq:               1     2     3     4     5     6
    keys = ["a", "a", None, "b", None, "a"]
    ids = add_events(sync_engine, [("t", {"n": n}, key) for n, key in enumerate(keys)])
    corrupt(sync_engine, 1, "headers", "[1,2]")  # a's head
    corrupt(sync_engine, 3, "headers", '"x"')
    corrupt(sync_engine, 5, "headers", '{"retry": 3}')
    broker = InMemoryBroker()
    result = await relay_for(async_engine, broker).relay_once()
    assert result == PassResult(claimed=6, published=3, dead=3)
    assert broker.ids() == [ids[1], ids[3], ids[5]]
    assert by_key(broker) == {"a": [{"n": 1}, {"n": 5}], "b": [{"n": 3}]}
    stored = {row.seq: row for row in rows(sync_engine)}
    assert [stored[seq].status for seq in range(1, 7)] == [
        "dead", "published", "dead", "published", "dead", "published",
    ]  # fmt: skip
    assert stored[1].last_error == "headers must be a JSON object, got an array"
    assert stored[3].last_error == "headers must be a JSON object, got a string"
    assert stored[5].last_error == "headers must map names to strings, got a number for 'retry'"
    assert {stored[seq].claim_owner for seq in range(1, 7)} == {None}


async def test_malformed_json_text_is_dead_lettered_alone_on_sqlite(sqlite: DatabaseUrls) -> None:
    sync_engine = sqlite.sync_engine()
    async_engine = sqlite.async_engine()
    try:
        ids = add_events(sync_engine, [("t", {"n": n}, "k") for n in range(3)])
        corrupt(sync_engine, 2, "payload", "{not json")
        corrupt(sync_engine, 3, "headers", "{]")
        broker = InMemoryBroker()
        assert await relay_for(async_engine, broker).relay_once() == PassResult(
            claimed=3, published=1, dead=2
        )
        assert broker.ids() == [ids[0]]
        stored = status_rows(sync_engine)
        assert [row.status for row in stored] == ["published", "dead", "dead"]
        assert stored[1].last_error.startswith("payload is not valid JSON (")
        assert stored[2].last_error.startswith("headers is not valid JSON (")
    finally:
        await async_engine.dispose()
        sync_engine.dispose()


def test_decode_row_names_the_column() -> None:
    assert decode_row('{"a": [1]}', '{"h": "v"}') == ({"a": [1]}, {"h": "v"}, None)
    assert decode_row("3", "{}") == (3, {}, None)
    assert decode_row("null", "null")[2] == "headers must be a JSON object, got null"
    assert decode_row("[]", '{"h": true}')[2] == (
        "headers must map names to strings, got a boolean for 'h'"
    )
    assert decode_row("nope", "{}")[2].startswith("payload is not valid JSON (Expecting value")


async def test_a_broker_error_with_nul_and_a_lone_surrogate_is_stored_escaped(
    sync_engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    ids = add_events(sync_engine, [("t", {"n": 0}, "k"), ("t", {"n": 1}, None)])
    broker = InMemoryBroker()

    def refuse(message: OutboxMessage) -> BaseException | None:
        return RuntimeError("bad\x00byte \ud800 here") if message.id == ids[0] else None

    broker.fail_when(refuse)
    result = await relay_for(async_engine, broker).relay_once()
    assert result == PassResult(claimed=2, published=1, retried=1)
    first = rows(sync_engine)[0]
    assert (first.status, first.attempts) == ("pending", 1)
    assert first.last_error == "RuntimeError: bad\\x00byte \\ud800 here"
