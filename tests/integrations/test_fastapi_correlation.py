"""SagaContextMiddleware: the correlation id flows header -> saga -> outbox headers ->
response; hostile header values are replaced by a fresh id and never reflected."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from sagaz import SagaConfig
from sagaz.context import current_correlation_id
from sagaz.integrations.fastapi import SagaContextMiddleware
from tests.integrations.fastapi_apps import build_app
from tests.integrations.integration_helpers import outbox_rows, saga_row

FRESH = re.compile(r"[0-9a-f]{32}")

HOSTILE = [
    pytest.param(b"x" * 129, id="129-chars"),
    pytest.param(b"a" * 10_000, id="10k-chars"),
    pytest.param(b"abc\r\nSet-Cookie: session=stolen", id="crlf-injection"),
    pytest.param(b"abc\ndef", id="lf"),
    pytest.param(b"abc\rdef", id="cr"),
    pytest.param(b"abc\x00def", id="nul"),
    pytest.param("caf\u00e9".encode(), id="non-ascii-utf8"),
    pytest.param("caf\u00e9".encode("latin-1"), id="non-ascii-latin1"),
    pytest.param(b"\xff\xfe", id="undecodable"),
    pytest.param(b"", id="empty"),
    pytest.param(b"a b", id="space"),
    pytest.param(b"<script>alert(1)</script>", id="markup"),
    pytest.param(b"id;drop", id="semicolon"),
    pytest.param(b"a/b", id="slash"),
]


async def call_middleware(
    headers: list[tuple[bytes, bytes]], *, header_name: str = "X-Correlation-ID", **extra: Any
) -> tuple[list[tuple[bytes, bytes]], str | None]:
    """Run one HTTP request through the middleware around a tiny app; returns the response
    headers and the correlation id the app saw."""
    seen: list[str | None] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(current_correlation_id())
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": list(extra.get("response_headers", [])),
            }
        )
        await send({"type": "http.response.body", "body": b"ok"})

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    middleware = SagaContextMiddleware(app, correlation_header=header_name)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": headers}
    await middleware(scope, receive, send)
    return list(sent[0]["headers"]), seen[0]


@pytest.fixture
def client(config: SagaConfig) -> Iterator[TestClient]:
    with TestClient(build_app(config)) as test_client:
        yield test_client


@pytest.mark.postgres
def test_correlation_id_flows_from_header_to_saga_outbox_and_response(
    client: TestClient, sync_db: sa.Engine
) -> None:
    response = client.post("/orders", headers={"X-Correlation-ID": "req-42.a:b_c"})
    assert response.status_code == 201
    assert response.headers["X-Correlation-ID"] == "req-42.a:b_c"
    saga = saga_row(sync_db, response.json()["saga_id"])
    assert saga is not None
    assert saga.correlation_id == "req-42.a:b_c"
    [event] = outbox_rows(sync_db)
    assert event.headers["correlation-id"] == "req-42.a:b_c"


@pytest.mark.postgres
@pytest.mark.parametrize("value", [None, "y" * 129, "caf\u00e9"])
def test_no_or_a_hostile_header_gets_a_fresh_id_everywhere_never_the_value(
    client: TestClient, sync_db: sa.Engine, value: str | None
) -> None:
    headers = [] if value is None else [(b"x-correlation-id", value.encode())]
    response = client.post("/orders", headers=headers)
    correlation_id = response.headers["X-Correlation-ID"]
    assert FRESH.fullmatch(correlation_id)
    saga = saga_row(sync_db, response.json()["saga_id"])
    assert saga is not None
    assert saga.correlation_id == correlation_id
    assert outbox_rows(sync_db)[0].headers["correlation-id"] == correlation_id


@pytest.mark.parametrize("raw", HOSTILE)
async def test_hostile_header_values_are_replaced_by_a_fresh_id(raw: bytes) -> None:
    headers, seen = await call_middleware([(b"x-correlation-id", raw)])
    [(name, value)] = headers
    assert name == b"x-correlation-id"
    assert FRESH.fullmatch(value.decode())
    assert value != raw
    assert seen == value.decode()
    assert all(raw not in v for _n, v in headers if raw)


async def test_a_valid_id_of_exactly_128_characters_is_kept() -> None:
    raw = b"A1._:-" * 21 + b"zz"
    assert len(raw) == 128
    headers, seen = await call_middleware([(b"x-correlation-id", raw)])
    assert headers == [(b"x-correlation-id", raw)]
    assert seen == raw.decode()


async def test_the_first_of_repeated_headers_is_used_and_names_match_any_case() -> None:
    headers, seen = await call_middleware(
        [(b"X-Correlation-Id", b"first"), (b"x-correlation-id", b"second")]
    )
    assert seen == "first"
    assert headers == [(b"x-correlation-id", b"first")]


async def test_a_header_the_application_set_itself_is_kept() -> None:
    headers, seen = await call_middleware(
        [(b"x-correlation-id", b"from-client")],
        response_headers=[(b"x-correlation-id", b"set-by-app")],
    )
    assert seen == "from-client"
    assert headers == [(b"x-correlation-id", b"set-by-app")]


async def test_a_custom_header_name() -> None:
    headers, seen = await call_middleware(
        [(b"x-request-id", b"abc"), (b"x-correlation-id", b"other")], header_name="X-Request-ID"
    )
    assert seen == "abc"
    assert headers == [(b"x-request-id", b"abc")]


def test_a_header_name_that_is_not_a_token_is_refused() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("never called")

    for bad in ("X-Bad\r\nName", "X Correlation", "", "x:y", "X-K\u00fcrzel"):
        with pytest.raises(ValueError, match="correlation_header"):
            SagaContextMiddleware(app, correlation_header=bad)


async def test_lifespan_passes_through_and_websockets_get_a_context() -> None:
    seen: list[tuple[str, str | None]] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append((scope["type"], current_correlation_id()))

    middleware = SagaContextMiddleware(app)

    async def receive() -> Message:
        return {}

    async def send(message: Message) -> None:
        return None

    await middleware({"type": "lifespan"}, receive, send)
    await middleware(
        {"type": "websocket", "headers": [(b"x-correlation-id", b"ws-1")]}, receive, send
    )
    assert seen == [("lifespan", None), ("websocket", "ws-1")]
    assert current_correlation_id() is None  # the scope ended with the connection
