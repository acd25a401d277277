"""Shared helpers of the relay tests: a recording broker double, event writers, waits."""

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
from sagaz.store.schema import outbox as outbox_table


class BrokerDown(ConnectionError):
    pass


class RecordingBroker:
    """A broker double that keeps every confirmed message, in order.

    `fail(message)` decides per message whether the broker refuses it; like a real broker
    under the Broker contract, once a message of a key fails, the rest of that key in the
    batch fails too (and is not delivered).
    """

    def __init__(
        self,
        fail: Callable[[OutboxMessage], bool] | None = None,
        *,
        delay: float = 0.0,
    ) -> None:
        self.fail = fail
        self.delay = delay
        self.delivered: list[OutboxMessage] = []
        self.batches: list[list[str]] = []
        self.connects = 0
        self.arrived = asyncio.Event()

    async def connect(self) -> None:
        self.connects += 1

    async def publish_batch(
        self, messages: Sequence[OutboxMessage]
    ) -> Sequence[BaseException | None]:
        self.batches.append([message.id for message in messages])
        if self.delay:
            await asyncio.sleep(self.delay)
        results: list[BaseException | None] = []
        failed_keys: set[str] = set()
        for message in messages:
            if message.key is not None and message.key in failed_keys:
                results.append(BrokerDown(f"held back after an earlier {message.key} failed"))
                continue
            if self.fail is not None and self.fail(message):
                results.append(BrokerDown(f"refused {message.id}"))
                if message.key is not None:
                    failed_keys.add(message.key)
                continue
            self.delivered.append(message)
            results.append(None)
        self.arrived.set()
        return results

    async def close(self) -> None:
        return None

    def ids(self) -> list[str]:
        return [message.id for message in self.delivered]

    def by_key(self) -> dict[str | None, list[Any]]:
        grouped: dict[str | None, list[Any]] = {}
        for message in self.delivered:
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
