"""The request's correlation id: g.sagaz_context, taken from X-Correlation-ID when it is
safe (validated as in the FastAPI integration) or generated, echoed in the response, and
recorded on the sagas and outbox events the request starts - also a saga run with
run_sync."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask, g
from flask.testing import FlaskClient

from sagaz.context import current_correlation_id
from sagaz.integrations._base import is_valid_correlation_id
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import build_app, running
from tests.integrations.integration_helpers import outbox_rows, saga_row

pytestmark = pytest.mark.postgres

HOSTILE = [
    "x" * 129,
    "evil\r\nSet-Cookie: a=b",
    "spaces are not allowed",
    "ünïcode",
    "<script>",
    "",
]


@pytest.fixture
def client(app_db: DatabaseUrls) -> Iterator[FlaskClient]:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        yield app.test_client()


def test_the_header_flows_to_the_saga_the_event_and_the_response(
    client: FlaskClient, sync_db: sa.Engine
) -> None:
    response = client.post("/orders", headers={"X-Correlation-ID": "req-42.a:b_c-d"})
    assert response.status_code == 201
    assert response.headers["X-Correlation-ID"] == "req-42.a:b_c-d"
    body = response.get_json()
    assert body["correlation_id"] == "req-42.a:b_c-d"  # g.sagaz_context in the view
    saga = saga_row(sync_db, body["saga_id"])
    assert saga is not None
    assert saga.correlation_id == "req-42.a:b_c-d"
    [event] = outbox_rows(sync_db)
    assert event.headers["correlation-id"] == "req-42.a:b_c-d"


def test_without_a_header_an_id_is_generated_and_echoed(client: FlaskClient) -> None:
    first = client.get("/context")
    second = client.get("/context")
    generated = first.headers["X-Correlation-ID"]
    assert is_valid_correlation_id(generated)
    assert first.get_json() == {"correlation_id": generated}
    assert second.headers["X-Correlation-ID"] != generated


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_are_replaced_never_reflected(client: FlaskClient, value: str) -> None:
    # straight into the WSGI environ: the test client refuses CR/LF in headers
    response = client.get("/context", environ_overrides={"HTTP_X_CORRELATION_ID": value})
    echoed = response.headers["X-Correlation-ID"]
    assert echoed != value
    assert is_valid_correlation_id(echoed)
    assert value not in response.text or value == ""


def test_run_sync_sagas_carry_the_requests_id(client: FlaskClient, sync_db: sa.Engine) -> None:
    response = client.post("/run", headers={"X-Correlation-ID": "run-7"})
    body = response.get_json()
    assert body["status"] == "completed"
    saga = saga_row(sync_db, body["saga_id"])
    assert saga is not None
    assert saga.correlation_id == "run-7"


def test_the_views_own_header_is_kept(client: FlaskClient) -> None:
    response = client.get("/own-header", headers={"X-Correlation-ID": "from-client"})
    assert response.headers.getlist("X-Correlation-ID") == ["set-by-the-view"]


def test_errors_are_echoed_too_and_the_id_does_not_outlive_the_request(
    client: FlaskClient,
) -> None:
    response = client.post(
        "/orders", query_string={"mode": "raise"}, headers={"X-Correlation-ID": "failing-1"}
    )
    assert response.status_code == 500
    assert response.headers["X-Correlation-ID"] == "failing-1"
    assert current_correlation_id() is None  # the test client ran the app in this thread


def test_other_before_request_hooks_see_the_id_and_a_custom_header(app_db: DatabaseUrls) -> None:
    app: Flask
    app, extension = build_app(app_db.url, correlation_header="X-Request-ID")
    seen: list[str | None] = []

    @app.before_request
    def remember() -> None:
        seen.append(current_correlation_id())
        assert g.sagaz_context.correlation_id == seen[-1]

    with running(app, extension):
        response = app.test_client().get("/context", headers={"X-Request-ID": "custom-1"})
    assert seen == ["custom-1"]
    assert response.headers["X-Request-ID"] == "custom-1"
    assert "X-Correlation-ID" not in response.headers
