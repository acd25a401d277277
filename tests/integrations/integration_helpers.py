"""Sagas, application tables and small helpers the integration tests share."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa

from sagaz import Saga, action, compensate
from sagaz.store.schema import outbox, sagas

app_metadata = sa.MetaData()
orders = sa.Table(
    "it_orders",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("item", sa.String(100), nullable=False),
)
# A line must reference an existing order - checked only at COMMIT (deferred), so a
# violation surfaces when the request's session commits, after the endpoint returned.
order_lines = sa.Table(
    "it_order_lines",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "order_id",
        sa.Integer,
        sa.ForeignKey(orders.c.id, deferrable=True, initially="DEFERRED"),
        nullable=False,
    ),
)


class StepLog:
    """Counts step executions per saga (and how many ran at once), across tasks/threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: dict[str, int] = {}
        self.running: dict[str, int] = {}
        self.max_running: dict[str, int] = {}

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.running.clear()
            self.max_running.clear()

    def enter(self, key: str) -> None:
        with self._lock:
            self.calls[key] = self.calls.get(key, 0) + 1
            self.running[key] = self.running.get(key, 0) + 1
            self.max_running[key] = max(self.max_running.get(key, 0), self.running[key])

    def leave(self, key: str) -> None:
        with self._lock:
            self.running[key] -= 1


step_log = StepLog()


class IntegrationOrderSaga(Saga):
    """reserve -> charge; `fail` in the context makes charge fail (reserve is compensated);
    `sleep` makes charge take that long (`sleep_once`: only its first run in this
    process)."""

    saga_name = "integration-order"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        return None

    @action("charge", depends_on=["reserve"])
    async def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        key = str(ctx.get("n", "?"))
        step_log.enter(key)
        try:
            await asyncio.sleep(float(ctx.get("sleep", 0)))
            if ctx.get("sleep_once") and step_log.calls[key] == 1:
                await asyncio.sleep(float(ctx["sleep_once"]))
            if ctx.get("fail"):
                raise RuntimeError("card declined")
            return {"charged": True}
        finally:
            step_log.leave(key)


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(orders, sagas, outbox events) in the database."""
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(orders)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox)) or 0,
        )


def saga_row(engine: sa.Engine, saga_id: str) -> sa.Row[Any] | None:
    with engine.connect() as connection:
        return connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one_or_none()


def outbox_rows(engine: sa.Engine) -> list[sa.Row[Any]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(outbox).order_by(outbox.c.seq)))


def pg_connections(admin: sa.Engine, application_name: str) -> int:
    """Open PostgreSQL connections whose application_name the test set (no others)."""
    with admin.connect() as connection:
        return int(
            connection.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": application_name},
            )
            or 0
        )


async def wait_until(check: Callable[[], bool], seconds: float = 15.0) -> None:
    """Poll a blocking `check` (run in a thread) until it holds."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.02)


def wait_until_sync(check: Callable[[], bool], seconds: float = 15.0) -> None:
    import time

    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {seconds}s")
        time.sleep(0.02)


def status_of(engine: sa.Engine, saga_id: str) -> str | None:
    row = saga_row(engine, saga_id)
    return None if row is None else str(row.status)


def settled_pg_connections(
    admin: sa.Engine, application_name: str, at_most: int, seconds: float = 5.0
) -> int:
    """The connection count once it dropped to `at_most` or `seconds` passed: a closed
    connection's backend leaves pg_stat_activity a moment after the client hung up."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        count = pg_connections(admin, application_name)
        if count <= at_most or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


def reached(engine: sa.Engine, saga_id: str, status: str = "completed") -> Callable[[], bool]:
    """A check for wait_until: the saga has `status`."""
    return lambda: status_of(engine, saga_id) == status
