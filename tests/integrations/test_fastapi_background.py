"""run_saga_background: durable (recorded before the response, with the request's own
writes), run in-process after the response under a worker's lease, never twice at once,
taken over by a worker when the process dies, failures recorded on the saga."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sagaz import SagaConfig
from sagaz.store.engines import create_async_engine
from sagaz.store.schema import saga_steps
from sagaz.worker import SagaWorker
from tests.conftest import DatabaseUrls
from tests.integrations.fastapi_apps import build_app
from tests.integrations.integration_helpers import (
    counts,
    saga_row,
    status_of,
    step_log,
    wait_until,
    wait_until_sync,
)

pytestmark = pytest.mark.postgres
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def client(config: SagaConfig) -> Iterator[TestClient]:
    with TestClient(build_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


def test_the_saga_commits_with_the_request_and_runs_after_the_response(
    client: TestClient, sync_db: sa.Engine
) -> None:
    response = client.post("/orders/background", headers={"X-Correlation-ID": "bg-1"})
    assert response.status_code == 202, response.text
    saga_id = response.json()["saga_id"]
    wait_until_sync(lambda: status_of(sync_db, saga_id) == "completed")
    saga = saga_row(sync_db, saga_id)
    assert saga is not None
    assert saga.attempts == 1  # claimed once, by this process
    assert saga.lease_owner is None
    assert saga.correlation_id == "bg-1"
    assert saga.context["charged"] is True
    assert counts(sync_db)[:2] == (1, 1)


def test_a_failing_step_is_recorded_on_the_saga(client: TestClient, sync_db: sa.Engine) -> None:
    saga_id = client.post("/orders/background", params={"fail": True}).json()["saga_id"]
    wait_until_sync(lambda: status_of(sync_db, saga_id) == "compensated")
    saga = saga_row(sync_db, saga_id)
    assert saga is not None
    assert "card declined" in saga.error
    with sync_db.connect() as connection:
        steps = dict(
            connection.execute(
                sa.select(saga_steps.c.name, saga_steps.c.status).where(
                    saga_steps.c.saga_id == saga_id
                )
            ).all()
        )
    assert steps == {"reserve": "compensated", "charge": "failed"}


@pytest.mark.parametrize("mode", ["raise", "http", "deferred"])
def test_nothing_is_recorded_or_run_when_the_request_fails(
    client: TestClient, sync_db: sa.Engine, mode: str
) -> None:
    response = client.post("/orders/background", params={"mode": mode})
    assert response.status_code in (409, 500)
    good = client.post("/orders/background").json()  # a good request after it
    wait_until_sync(lambda: status_of(sync_db, good["saga_id"]) == "completed")
    assert counts(sync_db)[:2] == (1, 1)
    assert step_log.calls == {str(good["order_id"]): 1}  # only the committed saga ran


def test_without_a_session_the_saga_is_recorded_in_its_own_transaction(
    client: TestClient, sync_db: sa.Engine
) -> None:
    saga_id = client.post("/orders/background-own-transaction", params={"n": 7}).json()["saga_id"]
    wait_until_sync(lambda: status_of(sync_db, saga_id) == "completed")
    assert step_log.calls == {"7": 1}


def test_an_application_session_that_commits_after_the_response_still_runs_it(
    client: TestClient, sync_db: sa.Engine
) -> None:
    saga_id = client.post("/orders/background-app-session").json()["saga_id"]
    wait_until_sync(lambda: status_of(sync_db, saga_id) == "completed")


def test_sync_endpoints_run_background_sagas_too(client: TestClient, sync_db: sa.Engine) -> None:
    body = client.post("/sync/orders").json()
    wait_until_sync(lambda: status_of(sync_db, body["background_id"]) == "completed")
    assert status_of(sync_db, body["saga_id"]) == "pending"  # start_saga: left for a worker


async def test_never_runs_twice_at_once_with_a_worker_racing_for_it(
    config: SagaConfig, sync_db: sa.Engine
) -> None:
    app = build_app(
        config, run_worker=True, worker_options={"poll_interval": 0.02, "concurrency": 10}
    )
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test"
        ) as client,
    ):
        responses = await asyncio.gather(
            *(client.post("/orders/background", params={"sleep": 0.05}) for _ in range(20))
        )
        saga_ids = [r.json()["saga_id"] for r in responses]
        await wait_until(
            lambda: all(status_of(sync_db, saga_id) == "completed" for saga_id in saga_ids)
        )
    assert len(step_log.calls) == 20
    assert set(step_log.calls.values()) == {1}  # every charge ran exactly once
    assert set(step_log.max_running.values()) == {1}


async def test_stopping_the_app_releases_running_sagas_for_a_worker(
    app_db: DatabaseUrls, sync_db: sa.Engine
) -> None:
    config = SagaConfig(database_url=app_db.url, lease_seconds=30)
    app = build_app(config, shutdown_grace_seconds=0.1)
    async with app.router.lifespan_context(app):
        async with httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app), base_url="http://test"
        ) as client:
            response = await client.post("/orders/background", params={"sleep_once": 30})
        saga_id = response.json()["saga_id"]
        await wait_until(lambda: step_log.running.get("1") == 1)
    # Stopped mid-step: the lease (30 s) was released at once, not left to expire.
    saga = saga_row(sync_db, saga_id)
    assert saga is not None
    assert saga.status == "running"
    assert saga.lease_owner is None
    engine = create_async_engine(app_db.url)
    worker = SagaWorker(engine, poll_interval=0.02, lease_seconds=2)
    runner = asyncio.create_task(worker.run_until_stopped())
    try:
        await wait_until(lambda: status_of(sync_db, saga_id) == "completed")
    finally:
        worker.stop()
        await runner
        await worker.store.close()
        await engine.dispose()
    assert step_log.calls == {"1": 2}  # interrupted once, finished by the worker


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_a_worker_completes_the_saga_when_the_process_dies(
    app_db: DatabaseUrls, sync_db: sa.Engine
) -> None:
    port = _free_port()
    env = {
        **os.environ,
        "SAGAZ_DATABASE_URL": app_db.url,
        "SAGAZ_LEASE_SECONDS": "1.5",
        "PYTHONNODEBUGRANGES": "1",
    }
    command = [sys.executable, "-m", "uvicorn", "tests.integrations.fastapi_crash_app:app"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        base = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            try:
                return httpx2.get(f"{base}/sagaz/health", timeout=1).status_code == 200
            except httpx2.HTTPError:
                assert server.poll() is None, server.communicate()[0]
                return False

        wait_until_sync(ready, 30)
        saga_id = httpx2.post(f"{base}/start", timeout=10).json()["saga_id"]

        def hanging() -> bool:
            with sync_db.connect() as connection:
                return (
                    connection.scalar(
                        sa.select(saga_steps.c.status).where(
                            saga_steps.c.saga_id == saga_id, saga_steps.c.name == "hang"
                        )
                    )
                    == "running"
                )

        wait_until_sync(hanging)
    finally:
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=10)

    from tests.integrations.fastapi_crash_app import CrashSaga  # registers it here

    async def take_over() -> None:
        engine = create_async_engine(app_db.url)
        worker = SagaWorker(engine, poll_interval=0.05, lease_seconds=2)
        runner = asyncio.create_task(worker.run_until_stopped())
        try:
            await wait_until(lambda: status_of(sync_db, saga_id) == "completed", 20)
        finally:
            worker.stop()
            await runner
            await worker.store.close()
            await engine.dispose()

    asyncio.run(take_over())
    saga = saga_row(sync_db, saga_id)
    assert saga is not None
    assert saga.attempts == 2  # the dead process's claim, then the worker's
    assert saga.context["finished_by"] == os.getpid()
    assert saga.context["prepared_by"] != os.getpid()  # completed step not re-run
    assert CrashSaga.saga_name == saga.name
