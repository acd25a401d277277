"""Shared helpers of the relay tests: broker set-ups, event writers, waits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from sagaz import outbox
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.store.schema import outbox as outbox_table


def failing(refuse: Callable[[OutboxMessage], bool], *, delay: float = 0.0) -> InMemoryBroker:
    """An in-memory broker that refuses the messages `refuse` picks (and, as every
    broker does, the later messages of a refused message's key in the same batch)."""
    broker = InMemoryBroker(delay=delay)
    broker.fail_when(refuse)
    return broker


def by_key(broker: InMemoryBroker) -> dict[str | None, list[Any]]:
    """The published payloads grouped by key, in publish order."""
    grouped: dict[str | None, list[Any]] = {}
    for message in broker.published:
        grouped.setdefault(message.key, []).append(message.payload)
    return grouped


def add_events(
    engine: sa.Engine,
    events: Sequence[tuple[str, Any, str | None]],
    *,
    headers: Mapping[str, str] | None = None,
) -> list[str]:
    """Add (topic, payload, key) events through `outbox.add` in one committed session."""
    with Session(engine) as session:
        ids = [
            outbox.add(session, topic, payload, key=key, headers=headers)
            for topic, payload, key in events
        ]
        session.commit()
    return ids


def rows(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(outbox_table).order_by(outbox_table.c.seq)))


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], *, within: float = 15.0, every: float = 0.01
) -> None:
    """Poll `check` until it holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s")
        await asyncio.sleep(every)


async def status_counts(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as connection:
        result = await connection.execute(
            sa.select(outbox_table.c.status, sa.func.count()).group_by(outbox_table.c.status)
        )
        return dict(result.all())
