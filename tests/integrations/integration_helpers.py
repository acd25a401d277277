"""Sagas, application tables and small helpers the integration tests share."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa

from sagaz import Saga, action, compensate
from sagaz.store.engines import create_async_engine
from sagaz.store.schema import outbox, sagas
from sagaz.worker import SagaWorker

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


# -- a slow saga and a separate polling worker (in-process runs vs. workers) --------------

#: (run key, step) for every step execution of `SlowLeaseSaga`, across threads.
slow_effects: list[tuple[str, str]] = []
SLOW_STEP_SECONDS = 1.5


class SlowLeaseSaga(Saga):
    """first -> second, each taking SLOW_STEP_SECONDS: long enough for a worker polling
    with a short lease to claim the run several times over, were it claimable."""

    saga_name = "integration-slow-lease"

    @action("first")
    async def first(self, ctx: dict[str, Any]) -> None:
        slow_effects.append((str(ctx["n"]), "first"))
        await asyncio.sleep(SLOW_STEP_SECONDS)

    @action("second", depends_on=["first"])
    async def second(self, ctx: dict[str, Any]) -> None:
        slow_effects.append((str(ctx["n"]), "second"))
        await asyncio.sleep(SLOW_STEP_SECONDS)


@contextmanager
def polling_worker(url: str, *, lease_seconds: float = 0.5) -> Iterator[SagaWorker]:
    """A `SagaWorker` polling the database at `url` every 50 ms with a short lease, in a
    thread and event loop of its own (as another process's worker would), until exit.
    It knows every saga of this process's registry."""
    started = threading.Event()
    holder: dict[str, Any] = {}

    async def serve() -> None:
        engine = create_async_engine(url)
        worker = SagaWorker(engine, lease_seconds=lease_seconds, poll_interval=0.05)
        holder["worker"], holder["loop"] = worker, asyncio.get_running_loop()
        started.set()
        try:
            await worker.run_until_stopped()
        finally:
            await worker.store.close()
            await engine.dispose()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), name="test-polling-worker")
    thread.start()
    assert started.wait(10), "the polling worker did not start"
    try:
        yield holder["worker"]
    finally:
        holder["loop"].call_soon_threadsafe(holder["worker"].stop)
        thread.join(30)
        assert not thread.is_alive(), "the polling worker did not stop"
