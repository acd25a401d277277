"""Running work written once against a sync `Connection` on any kind of bind (DESIGN
rule 5): a sync `Connection` or `Engine`, or an `AsyncConnection` or `AsyncEngine` - in
which case the result is an awaitable. Given a connection, the work runs in the caller's
transaction and committing is left to the caller; given an engine, it commits on its own
(a "write" in one transaction, a "read" or "batches" run committing when done, so work
that commits per batch can do so through the connection it is given).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

T = TypeVar("T")
SyncBind = sa.Connection | sa.Engine
AsyncBind = AsyncConnection | AsyncEngine
Mode = Literal["read", "write", "batches"]


def run_on_bind(bind: SyncBind | AsyncBind, work: Callable[[sa.Connection], T], mode: Mode) -> Any:
    """Run `work` on a sync connection from `bind` (see the module docstring)."""
    if isinstance(bind, sa.Connection):
        return work(bind)
    if isinstance(bind, sa.Engine):
        if mode == "write":
            with bind.begin() as connection:
                return work(connection)
        with bind.connect() as connection:
            result = work(connection)
            connection.commit()
            return result
    if isinstance(bind, AsyncConnection):
        return bind.run_sync(work)
    if isinstance(bind, AsyncEngine):
        return _run_async(bind, work, mode)
    raise TypeError(
        "expected a SQLAlchemy Connection, Engine, AsyncConnection or AsyncEngine, "
        f"got {type(bind).__name__}"
    )


async def _run_async(engine: AsyncEngine, work: Callable[[sa.Connection], T], mode: Mode) -> T:
    if mode == "write":
        async with engine.begin() as connection:
            return await connection.run_sync(work)
    async with engine.connect() as connection:
        result = await connection.run_sync(work)
        await connection.commit()
        return result
