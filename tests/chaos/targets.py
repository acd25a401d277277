"""Where the chaos hurts most: which worker processes to kill or pause.

A kill aims at a worker whose relay holds an outbox claim at that moment (a relay killed
mid-batch), a pause at the worker running the most doomed sagas inside `reserve` (a
stalled run that may write its effect after the new owner compensated). Both are read
from the databases; when nothing matches - or the database is away - the victim is
chosen at random.
"""

from __future__ import annotations

from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.store.schema import outbox
from tests.chaos.chaos_sagas import RESERVE_SECONDS
from tests.chaos.workload import DOOM_EVERY

T = TypeVar("T")


class Targets:
    def __init__(self, chaos_db: AsyncEngine, effects_db: AsyncEngine, schema: str) -> None:
        self.chaos_db = chaos_db
        self.effects_db = effects_db
        self.schema = schema
        self.errors: list[str] = []

    async def relay_claim_holders(self) -> list[int]:
        """Pids of the relays that hold a claim on pending events now (the relay's owner
        is `host:pid:random`)."""
        query = (
            sa.select(outbox.c.claim_owner)
            .where(outbox.c.status == "pending", outbox.c.claim_owner.is_not(None))
            .where(outbox.c.claim_expires_at > sa.func.now())
            .distinct()
        )
        try:
            async with self.chaos_db.connect() as connection:
                owners = (await connection.execute(query)).scalars().all()
        except Exception as error:
            return self._failed(error, [])
        return [int(owner.rsplit(":", 2)[1]) for owner in owners]

    async def still_claimed_by(self, pid: int) -> bool:
        """Whether pending events are still claimed by the relay of `pid` (a kill caught it
        holding them)."""
        query = sa.select(sa.func.count()).where(
            outbox.c.status == "pending", outbox.c.claim_owner.like(f"%:{pid}:%")
        )
        try:
            async with self.chaos_db.connect() as connection:
                return bool((await connection.execute(query)).scalar())
        except Exception as error:
            return self._failed(error, False)

    async def doomed_in_reserve(self) -> list[int]:
        """Pids running doomed sagas' `reserve` now, the busiest first."""
        query = sa.text(
            f'SELECT pid FROM "{self.schema}".chaos_reserve_starts '
            "WHERE at > clock_timestamp() - make_interval(secs => :window) AND mod(n, :every) = 0 "
            "GROUP BY pid ORDER BY count(*) DESC"
        )
        try:
            async with self.effects_db.connect() as connection:
                result = await connection.execute(
                    query, {"window": RESERVE_SECONDS * 0.8, "every": DOOM_EVERY}
                )
                return [row.pid for row in result]
        except Exception as error:
            return self._failed(error, [])

    def _failed(self, error: Exception, default: T) -> T:
        """Note why a look-up failed (the database restarting) and aim at random."""
        self.errors.append(f"{type(error).__name__}: {error}"[:120])
        return default
