"""1,000 requests, 100 at a time, through the FastAPI example leave PostgreSQL's
connections (pg_stat_activity, counting only this test's application_name) at the pool's
baseline, and none once the app stopped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sagaz import SagaConfig
from sagaz.store.schema import outbox, sagas
from tests.conftest import DatabaseUrls

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "fastapi_app"

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture
def admin(postgres_server_url: str) -> Iterator[sa.Engine]:
    engine = sa.create_engine(
        make_url(postgres_server_url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool
    )
    yield engine
    engine.dispose()


def connections(admin: sa.Engine, application_name: str, settle_to: int | None = None) -> int:
    """This test's connections; with `settle_to`, wait (up to 5 s) for closed ones to
    leave pg_stat_activity first."""
    deadline = time.monotonic() + 5
    while True:
        with admin.connect() as connection:
            count = int(
                connection.scalar(
                    sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n"),
                    {"n": application_name},
                )
                or 0
            )
        if settle_to is None or count <= settle_to or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


async def checked_out_settles(pool: sa.Pool, seconds: float = 5.0) -> int:
    """The pool's checked-out connections once they reach 0, or after `seconds`."""
    deadline = time.monotonic() + seconds
    while pool.checkedout() and time.monotonic() < deadline:  # type: ignore[attr-defined]
        await asyncio.sleep(0.01)
    return int(pool.checkedout())  # type: ignore[attr-defined]


async def test_1000_requests_100_at_a_time_leave_no_connection_behind(
    pg: DatabaseUrls, admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from fastapi_orders.app import create_app

    name = str(pg.application_name)
    config = SagaConfig(database_url=pg.url)
    app = create_app(config, in_process_worker=False)
    in_flight = asyncio.Semaphore(100)

    async def place(client: httpx2.AsyncClient, n: int) -> None:
        async with in_flight:
            response = await client.post(
                "/orders", json={"item": f"item-{n}", "quantity": 1, "unit_price_cents": 100}
            )
        assert response.status_code == 201, response.text

    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test", timeout=60
        ) as client,
    ):
        pool = config.engine.pool
        # Warm up: 100 concurrent requests grow the pool to its size (overflow closed).
        await asyncio.gather(*(place(client, n) for n in range(100)))
        baseline = await asyncio.to_thread(connections, admin, name, pool.size())
        assert 1 <= baseline <= pool.size()  # type: ignore[attr-defined]

        await asyncio.gather(*(place(client, n) for n in range(100, 1100)))

        # A response can reach the client a moment before its session's connection is back
        # in the pool, and the coalesced post-commit NOTIFY (sagaz.store.wakeup) borrows one
        # for a round trip: wait for them.
        assert await checked_out_settles(pool) == 0
        # Every connection of this app is one idle in its pool (an overflow connection the
        # pool closed may linger in pg_stat_activity a moment: wait for it to go).
        pooled = pool.checkedin()  # type: ignore[attr-defined]
        after = await asyncio.to_thread(connections, admin, name, pooled)
        assert after == pooled <= baseline

    assert await asyncio.to_thread(connections, admin, name, 0) == 0
    check = pg.sync_engine(poolclass=sa.NullPool)
    with check.connect() as connection:
        for table in (sa.table("orders"), sagas, outbox):
            assert connection.scalar(sa.select(sa.func.count()).select_from(table)) == 1100
    check.dispose()
