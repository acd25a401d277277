"""JSON documents read back exactly as written (numbers included), a None payload is the
JSON document null, and mappings that are not dicts are stored as objects - through
commit, read-back, the worker and the relay, on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from collections import UserDict
from collections.abc import Iterator, Mapping
from enum import IntEnum
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz import Saga, action, outbox, start_saga
from sagaz.outbox.brokers.common import decode_payload, encode_payload
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import saga_steps, sagas
from sagaz.worker import SagaWorker
from tests.store.exact import as_stored, same

#: Numbers binary JSON or NUMERIC affinity used to change.
NUMBERS: list[Any] = [
    -0.0, 0.0, 1.0, -1.0, 0.1, 1e16, -1e16, 1e300, 5e-324, 1.7976931348623157e308,
    2**53 + 1, 2**63, 2**64, -(2**64), 10**599, -(10**599), 0, True, False,
]  # fmt: skip


class Levels(IntEnum):
    HIGH = 3


class Frozen(Mapping[str, Any]):
    """A Mapping that is neither a dict nor a UserDict."""

    def __init__(self, **items: Any) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


MAPPINGS: dict[str, Any] = {
    "proxy": MappingProxyType({"a": UserDict({"b": Frozen(c=1)})}),
    "list": [Frozen(x=[MappingProxyType({})]), (1, "two")],
    "level": Levels.HIGH,
}

seen: list[dict[str, Any]] = []


class EchoSaga(Saga):
    saga_name = "exact-json-echo"

    @action("echo")
    async def echo(self, ctx: Any) -> dict[str, Any]:
        seen.append(dict(ctx))
        return {"echo": ctx["numbers"], "mapping": MappingProxyType({"n": ctx["numbers"][0]})}


@pytest.fixture
def engine(sync_engine: sa.Engine) -> sa.Engine:
    return sync_engine


def stored(engine: sa.Engine, event_id: str) -> sa.Row[Any]:
    with engine.connect() as connection:
        query = sa.select(outbox_table, sa.cast(outbox_table.c.payload, sa.Text).label("text"))
        return connection.execute(query.where(outbox_table.c.id == event_id)).one()


async def relayed(async_engine: AsyncEngine) -> list[Any]:
    broker = InMemoryBroker()
    await OutboxRelay(async_engine, broker, listen=False).relay_once()
    return [message.payload for message in broker.published]


async def test_a_none_payload_is_stored_as_json_null(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    with Session(engine) as session:
        kept = start_saga(session, EchoSaga, {"numbers": [1]})
        event_id = outbox.add(session, "t", None)
        session.commit()  # failed on the NOT NULL column, taking the saga with it
    row = stored(engine, event_id)
    assert row.payload is None
    assert row.text == "null"  # the JSON document null, not SQL NULL
    with engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).where(sagas.c.id == kept)) == 1
    assert await relayed(async_engine) == [None]
    assert decode_payload(encode_payload(None), "wire") is None


async def test_mappings_that_are_not_dicts_are_stored_as_objects(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    expected = as_stored(MAPPINGS)
    assert expected["proxy"] == {"a": {"b": {"c": 1}}}
    with Session(engine) as session:
        saga_id = start_saga(session, EchoSaga, MAPPINGS)
        event_id = outbox.add(session, "t", MAPPINGS["list"])
        session.commit()  # failed: "Object of type MappingProxyType is not JSON serializable"
    with engine.connect() as connection:
        context = connection.scalar(sa.select(sagas.c.context).where(sagas.c.id == saga_id))
    assert same(context, expected)
    assert same(stored(engine, event_id).payload, expected["list"])
    assert same((await relayed(async_engine))[0], expected["list"])


async def test_numbers_round_trip_exactly(engine: sa.Engine, async_engine: AsyncEngine) -> None:
    documents = [*NUMBERS, NUMBERS, {"numbers": NUMBERS, "nested": {"n": -0.0}}]
    with Session(engine) as session:
        ids = [outbox.add(session, "t", document) for document in documents]
        session.commit()
    for event_id, document in zip(ids, documents, strict=True):
        assert same(stored(engine, event_id).payload, document), document
    published = await relayed(async_engine)
    assert len(published) == len(documents)  # none dead-lettered (10**599 was inf on SQLite)
    for payload, document in zip(published, documents, strict=True):
        assert same(payload, document), document
        assert same(decode_payload(encode_payload(payload), "wire"), document)


async def test_numbers_round_trip_through_the_worker(
    engine: sa.Engine, async_engine: AsyncEngine
) -> None:
    """The context a step sees, and the result and context the worker stores (on
    PostgreSQL through one json_to_recordset statement per batch), keep every number."""
    seen.clear()
    async with AsyncSession(async_engine) as session:
        saga_id = start_saga(session, EchoSaga, {"numbers": NUMBERS})
        await session.commit()
    worker = SagaWorker(async_engine, lease_seconds=2.0, poll_interval=0.05, listen=False)
    running = asyncio.create_task(worker.run_until_stopped())
    try:
        async with asyncio.timeout(20):
            while await _status(async_engine, saga_id) != "completed":
                await asyncio.sleep(0.02)
    finally:
        worker.stop()
        await running
    assert same(seen, [{"numbers": NUMBERS}])
    with engine.connect() as connection:
        result = connection.scalar(sa.select(saga_steps.c.result))
        context = connection.scalar(sa.select(sagas.c.context).where(sagas.c.id == saga_id))
    assert same(result, {"echo": NUMBERS, "mapping": {"n": NUMBERS[0]}})
    assert same(context["numbers"], NUMBERS)


async def _status(async_engine: AsyncEngine, saga_id: str) -> str | None:
    async with async_engine.connect() as connection:
        return await connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id))
