"""get_saga_session against real PostgreSQL: the application's row, the saga and the
outbox event commit together and before the response is sent; an endpoint that raises
leaves none of them; a commit that fails (a deferred constraint) is a 5xx that leaves
nothing - never the endpoint's success response. With FastAPI's TestClient and with an
async client (httpx2 over ASGI)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sagaz import SagaConfig
from sagaz.integrations._base import COMMIT_FAILED_NOTE
from sagaz.store.schema import sagas
from tests.integrations.fastapi_apps import build_app
from tests.integrations.integration_helpers import counts, orders, outbox_rows, saga_row

pytestmark = pytest.mark.postgres


class ResponseProbe:
    """Outermost ASGI middleware: when the response starts, reads what is committed (on
    another connection) - proof that the commit happened before the response."""

    def __init__(self, app: ASGIApp, engine: sa.Engine) -> None:
        self.app = app
        self.engine = engine
        self.seen: list[tuple[int, int, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def probing_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                self.seen.append(counts(self.engine))
            await send(message)

        await self.app(scope, receive, probing_send)


@pytest.fixture
def client(config: SagaConfig) -> Iterator[TestClient]:
    with TestClient(build_app(config), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture
async def async_client(config: SagaConfig) -> AsyncIterator[httpx2.AsyncClient]:
    app = build_app(config)
    async with (
        app.router.lifespan_context(app),
        httpx2.AsyncClient(
            transport=httpx2.ASGITransport(app=app, raise_app_exceptions=False),
            base_url="http://test",
        ) as test_client,
    ):
        yield test_client


def test_order_saga_and_event_commit_together_before_the_response(
    config: SagaConfig, sync_db: sa.Engine
) -> None:
    app = build_app(config)
    probe: list[ResponseProbe] = []

    def probed(inner: ASGIApp) -> ResponseProbe:
        probe.append(ResponseProbe(inner, sync_db))
        return probe[0]

    with TestClient(probed(app)) as client:  # type: ignore[arg-type]
        response = client.post("/orders", params={"item": "lamp"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert probe[0].seen == [(1, 1, 1)]  # visible to another connection before the response
    saga = saga_row(sync_db, body["saga_id"])
    assert saga is not None
    assert saga.name == "integration-order"
    assert saga.context == {"n": body["order_id"]}
    [event] = outbox_rows(sync_db)
    assert str(event.id) == body["event_id"]
    assert event.payload == {"order_id": body["order_id"]}
    with sync_db.connect() as connection:
        assert connection.scalar(sa.select(orders.c.item)) == "lamp"


@pytest.mark.parametrize(("mode", "status"), [("raise", 500), ("http", 409)])
def test_an_endpoint_that_raises_after_starting_a_saga_leaves_nothing(
    client: TestClient, sync_db: sa.Engine, mode: str, status: int
) -> None:
    response = client.post("/orders", params={"mode": mode})
    assert response.status_code == status
    assert counts(sync_db) == (0, 0, 0)


def test_a_commit_that_fails_is_a_5xx_and_leaves_nothing(
    client: TestClient, sync_db: sa.Engine
) -> None:
    response = client.post("/orders", params={"mode": "deferred"})
    assert response.status_code == 500
    assert "saga_id" not in response.text
    assert counts(sync_db) == (0, 0, 0)
    # The session was rolled back and returned: the next request commits normally.
    assert client.post("/orders").status_code == 201
    assert counts(sync_db) == (1, 1, 1)


def test_a_failed_commit_reaches_the_applications_exception_handler(
    config: SagaConfig, sync_db: sa.Engine
) -> None:
    app: FastAPI = build_app(config)
    seen: list[BaseException] = []

    @app.exception_handler(sa.exc.IntegrityError)
    async def conflict(_request: Request, error: Exception) -> JSONResponse:
        seen.append(error)
        return JSONResponse({"error": "conflict"}, status_code=409)

    with TestClient(app) as client:
        response = client.post("/orders", params={"mode": "deferred"})
    assert response.status_code == 409
    assert response.json() == {"error": "conflict"}
    assert COMMIT_FAILED_NOTE in getattr(seen[0], "__notes__", [])
    assert counts(sync_db) == (0, 0, 0)


def test_one_session_per_request_however_often_it_is_depended_on(client: TestClient) -> None:
    assert client.get("/same-session").json() == {"same": True}


def test_get_config_returns_the_initialised_config(client: TestClient, config: SagaConfig) -> None:
    assert client.get("/config").json() == {"is_given_config": True, "initialized": True}


def test_dependencies_before_startup_say_to_use_create_lifespan(config: SagaConfig) -> None:
    client = TestClient(build_app(config))  # not entered: the lifespan never ran
    with pytest.raises(Exception, match=r"create_lifespan\(config\)"):
        client.get("/config")
    with pytest.raises(Exception, match="create_lifespan"):
        client.post("/orders")


def test_saga_factory_injects_a_saga_bound_to_the_config(
    client: TestClient, sync_db: sa.Engine
) -> None:
    body = client.post("/in-process").json()
    assert body["status"] == "completed"
    saga = saga_row(sync_db, body["saga_id"])  # the config's store journaled the run
    assert saga is not None
    assert saga.status == "completed"


def test_sync_endpoints_commit_a_sync_session_before_the_response(
    client: TestClient, sync_db: sa.Engine
) -> None:
    response = client.post("/sync/orders")
    assert response.status_code == 201, response.text
    assert counts(sync_db) == (1, 2, 1)  # its saga and the background one
    assert client.post("/sync/orders", params={"mode": "raise"}).status_code == 500
    assert client.post("/sync/orders", params={"mode": "deferred"}).status_code == 500
    assert counts(sync_db) == (1, 2, 1)


# -- the same promises through an async client ---------------------------------------


async def test_async_client_commits_everything_together(
    async_client: httpx2.AsyncClient, sync_db: sa.Engine
) -> None:
    response = await async_client.post("/orders")
    assert response.status_code == 201
    assert counts(sync_db) == (1, 1, 1)


@pytest.mark.parametrize("mode", ["raise", "http", "deferred"])
async def test_async_client_failures_leave_nothing(
    async_client: httpx2.AsyncClient, sync_db: sa.Engine, mode: str
) -> None:
    response = await async_client.post("/orders", params={"mode": mode})
    assert response.status_code in (409, 500)
    assert "saga_id" not in response.text
    assert counts(sync_db) == (0, 0, 0)


async def test_async_client_concurrent_requests_each_commit_their_own_rows(
    async_client: httpx2.AsyncClient, sync_db: sa.Engine
) -> None:
    import asyncio

    modes = ["ok", "raise", "ok", "deferred", "ok", "http"] * 5
    responses = await asyncio.gather(
        *(async_client.post("/orders", params={"mode": mode}) for mode in modes)
    )
    good = [r.json() for r in responses if r.status_code == 201]
    assert len(good) == modes.count("ok")
    with sync_db.connect() as connection:
        saga_ids = {str(i) for i in connection.scalars(sa.select(sagas.c.id))}
    assert saga_ids == {body["saga_id"] for body in good}
    assert counts(sync_db) == (len(good), len(good), len(good))
