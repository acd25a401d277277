"""The application side of the chaos test: it starts sagas and adds outbox events in its
own transactions, at a steady rate, through the database restart.

Each transaction is one numbered batch: its `chaos_batches` row, its orders with their
sagas (`start_saga`, idempotency key `order-N`) and its events (`outbox.add`) commit
together or not at all. A batch whose commit failed is retried; a retry that finds its
batch row already there knows the earlier commit went through and skips it, so a commit
whose outcome was unknown (the server crashed during it) is neither lost nor doubled.
`sagas` and `events` list what the application knows to be committed.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sagaz import outbox, start_saga
from tests.chaos.chaos_sagas import SAGA_NAME, batches, orders

TICK = 0.1
#: One saga in `DOOM_EVERY` fails on purpose (confirm) and must end COMPENSATED.
DOOM_EVERY = 5
RETRY_FOR = 90.0


def doomed(n: int) -> bool:
    return n % DOOM_EVERY == 0


@dataclass
class Producer:
    engine: AsyncEngine
    topic_prefix: str
    sagas: list[int] = field(default_factory=list)
    events: list[int] = field(default_factory=list)
    failed_commits: int = 0
    _batch: int = 0

    @property
    def saga_topic(self) -> str:
        return f"{self.topic_prefix}.charged"

    @property
    def event_topic(self) -> str:
        return f"{self.topic_prefix}.events"

    async def run(self, seconds: float, sagas: int, events: int, *, first_event: int = 0) -> None:
        """Commit `sagas` sagas and `events` events evenly over `seconds`."""
        ticks = max(1, round(seconds / TICK))
        start = time.monotonic()
        first_saga = len(self.sagas)
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, start + tick * TICK - time.monotonic()))
            saga_numbers = range(
                first_saga + sagas * tick // ticks, first_saga + sagas * (tick + 1) // ticks
            )
            event_numbers = range(
                first_event + events * tick // ticks, first_event + events * (tick + 1) // ticks
            )
            await self.commit_batch(saga_numbers, event_numbers)

    async def commit_batch(self, saga_numbers: range, event_numbers: range) -> None:
        if not saga_numbers and not event_numbers:
            return
        self._batch += 1
        sessions = async_sessionmaker(self.engine)
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                async with sessions() as session, session.begin():
                    await self._write(session, self._batch, saga_numbers, event_numbers)
                break
            except Exception:
                self.failed_commits += 1
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
        self.sagas.extend(saga_numbers)
        self.events.extend(event_numbers)

    async def _write(
        self, session: AsyncSession, batch: int, saga_numbers: range, event_numbers: range
    ) -> None:
        claimed = await session.execute(
            insert(batches).values(batch=batch).on_conflict_do_nothing().returning(batches.c.batch)
        )
        if claimed.first() is None:
            return  # an earlier attempt committed this batch
        for n in saga_numbers:
            await session.execute(sa.insert(orders).values(n=n, doom=doomed(n)))
            start_saga(
                session,
                SAGA_NAME,
                {"n": n, "doom": doomed(n), "topic": self.saga_topic},
                idempotency_key=f"order-{n}",
            )
        for e in event_numbers:
            outbox.add(session, self.event_topic, {"e": e}, key=f"k{e % 16}")
