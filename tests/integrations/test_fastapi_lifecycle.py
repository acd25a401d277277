"""create_lifespan: starting and stopping the app 10 times leaves no connection, task or
thread behind; it composes with the application's own lifespan; the health router; a
missing or too old FastAPI is reported with the extra to install."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from sagaz import SagaConfig
from sagaz.integrations.fastapi import create_health_router, create_lifespan, get_config
from tests.conftest import DatabaseUrls
from tests.integrations.fastapi_apps import build_app
from tests.integrations.integration_helpers import (
    pg_connections,
    reached,
    settled_pg_connections,
    wait_until,
    wait_until_sync,
)

ROOT = Path(__file__).resolve().parents[2]
WORKER_OPTIONS = {"poll_interval": 0.05}
RELAY_OPTIONS = {"poll_interval": 0.05}


def app_with_worker_and_relay(config: SagaConfig) -> FastAPI:
    return build_app(
        config,
        run_worker=True,
        run_relay=True,
        worker_options=WORKER_OPTIONS,
        relay_options=RELAY_OPTIONS,
    )


def settled_thread_count(at_most: int, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while threading.active_count() > at_most and time.monotonic() < deadline:
        time.sleep(0.02)
    return threading.active_count()


@pytest.mark.postgres
def test_ten_starts_and_stops_leave_no_connection_or_thread(
    config: SagaConfig, app_db: DatabaseUrls, admin: sa.Engine, sync_db: sa.Engine
) -> None:
    name = str(app_db.application_name)
    app = app_with_worker_and_relay(config)
    threads_before = threading.active_count()
    for _ in range(10):
        with TestClient(app) as client:
            saga_id = client.post("/orders").json()["saga_id"]  # run by the in-process worker
            background = client.post("/orders/background").json()["saga_id"]
            assert client.post("/sync/orders").status_code == 201
            assert client.get("/sagaz/health").status_code == 200
            wait_until_sync(reached(sync_db, saga_id))
            wait_until_sync(reached(sync_db, background))
            assert pg_connections(admin, name) >= 2  # the pool and LISTEN connections
        assert settled_pg_connections(admin, name, 0) == 0
        assert not config.initialized
    assert settled_thread_count(threads_before) == threads_before


@pytest.mark.postgres
async def test_ten_starts_and_stops_leave_no_task_behind(
    config: SagaConfig, app_db: DatabaseUrls, admin: sa.Engine, sync_db: sa.Engine
) -> None:
    name = str(app_db.application_name)
    app = app_with_worker_and_relay(config)
    tasks_before = asyncio.all_tasks()
    for _ in range(10):
        async with (
            app.router.lifespan_context(app),
            httpx2.AsyncClient(
                transport=httpx2.ASGITransport(app=app), base_url="http://test"
            ) as client,
        ):
            response = await client.post("/orders/background")
            saga_id = response.json()["saga_id"]
            await wait_until(reached(sync_db, saga_id))
            assert len(asyncio.all_tasks()) > len(tasks_before)  # worker, relay, listeners
        assert asyncio.all_tasks() == tasks_before
        assert await asyncio.to_thread(settled_pg_connections, admin, name, 0) == 0


@pytest.mark.postgres
def test_composes_with_the_applications_own_lifespan(config: SagaConfig) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        runtime = app.state.sagaz  # sagaz is ready when the application's lifespan starts
        events.append(f"app start, sagaz started={runtime.started}")
        yield {"greeting": "hello"}
        events.append(f"app stop, sagaz started={runtime.started}")

    app = FastAPI(lifespan=create_lifespan(config, lifespan=own_lifespan))

    @app.get("/")
    async def index(request: Request) -> dict[str, Any]:
        config_seen = await get_config(request)
        return {"greeting": request.state.greeting, "same": config_seen is config}

    with TestClient(app) as client:
        assert client.get("/").json() == {"greeting": "hello", "same": True}
    assert events == ["app start, sagaz started=True", "app stop, sagaz started=True"]
    assert not hasattr(app.state, "sagaz")
    assert not config.initialized


@pytest.mark.postgres
def test_can_be_entered_from_the_applications_lifespan(config: SagaConfig) -> None:
    sagaz_lifespan = create_lifespan(config)

    @asynccontextmanager
    async def own_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with sagaz_lifespan(app) as state:
            yield {**state, "mine": True}

    app = FastAPI(lifespan=own_lifespan)
    app.include_router(create_health_router(path="/health", name="ops_health", tags=["ops"]))
    assert app.url_path_for("ops_health") == "/health"
    with TestClient(app) as client:
        response = client.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"


@pytest.mark.postgres
def test_the_health_router_reports_the_outbox(config: SagaConfig) -> None:
    with TestClient(build_app(config)) as client:
        client.post("/orders")
        response = client.get("/sagaz/health")
    assert response.status_code == 200
    assert response.json()["outbox"]["pending"] == 1
    assert response.json()["outbox"]["dead"] == 0


def test_the_health_router_says_503_when_the_database_is_unreachable() -> None:
    config = SagaConfig(database_url="postgresql://nobody@127.0.0.1:1/none?connect_timeout=1")
    app = FastAPI(lifespan=create_lifespan(config))
    app.include_router(create_health_router())
    with TestClient(app) as client:
        response = client.get("/sagaz/health")
    assert response.status_code == 503
    assert response.json()["status"] == "failing"


def test_without_a_database_the_health_router_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGAZ_DATABASE_URL", raising=False)
    app = FastAPI(lifespan=create_lifespan())  # config from the environment
    app.include_router(create_health_router())
    with TestClient(app) as client:
        assert client.get("/sagaz/health").json() == {
            "status": "ok",
            "database": "not configured",
        }


def test_saga_factory_refuses_what_is_not_a_saga_class() -> None:
    from sagaz.integrations.fastapi import SagaFactory, saga_factory
    from tests.integrations.integration_helpers import IntegrationOrderSaga

    assert repr(saga_factory(IntegrationOrderSaga)) == "SagaFactory(IntegrationOrderSaga)"
    with pytest.raises(TypeError, match="Saga subclass"):
        SagaFactory(dict)  # type: ignore[type-var]


def run_python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-W", "error", "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_fastapi_sagaz_imports_and_the_adapter_names_the_extra() -> None:
    done = run_python(
        """
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("fastapi", "starlette"):
                    raise ImportError(f"{name} is blocked")

        sys.meta_path.insert(0, Blocker())
        import sagaz, sagaz.integrations, sagaz.integrations._base
        try:
            import sagaz.integrations.fastapi
        except sagaz.MissingExtraError as error:
            print(error.extra, "|", error)
        """
    )
    assert done.returncode == 0, done.stderr
    extra, message = done.stdout.strip().split(" | ")
    assert extra == "fastapi"
    assert "pip install 'sagaz[fastapi]'" in message


def test_a_fastapi_older_than_0_121_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "fastapi"
    fake.mkdir()
    (fake / "__init__.py").write_text('__version__ = "0.118.2"\nAPIRouter = Depends = object\n')
    done = run_python(
        """
        try:
            import sagaz.integrations.fastapi
        except ImportError as error:
            print(error)
        """,
        PYTHONPATH=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert "needs fastapi>=0.121" in done.stdout
    assert "found 0.118.2" in done.stdout
