"""One trace from the HTTP request to the consumer (sagaz.tracing), with each framework's
usual OpenTelemetry instrumentation and nothing else: a request with a ``traceparent``
starts a saga and adds an event; the worker's run and step spans, the relay's publish
span and a Redis consumer's processing span all join the request's trace, each below
the span it continues. Real PostgreSQL and the real Redis on this machine."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.instrumentation.flask import FlaskInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagaz import SagaConfig
from tests.conftest import DatabaseUrls
from tests.integrations import fastapi_apps, flask_apps
from tests.observability.tracing_helpers import (
    PROVIDER,
    TRACEPARENT,
    check_one_trace,
    continue_downstream,
)

pytestmark = pytest.mark.postgres


def test_a_fastapi_request_is_one_trace_to_the_consumer(
    config: SagaConfig, app_db: DatabaseUrls, exporter: InMemorySpanExporter
) -> None:
    app = fastapi_apps.build_app(config)
    FastAPIInstrumentor.instrument_app(app, tracer_provider=PROVIDER)
    with TestClient(app) as client:
        response = client.post("/orders", headers={"traceparent": TRACEPARENT})
    assert response.status_code == 201, response.text
    saga_id = response.json()["saga_id"]
    downstream = asyncio.run(continue_downstream(app_db.url, saga_id))
    assert downstream.message.id == response.json()["event_id"]
    check_one_trace(
        exporter.get_finished_spans(),
        downstream,
        saga_name="integration-order",
        saga_id=saga_id,
        steps=["reserve", "charge"],
    )


def test_a_flask_request_is_one_trace_to_the_consumer(
    app_db: DatabaseUrls, exporter: InMemorySpanExporter
) -> None:
    app, _extension = flask_apps.build_app(app_db.url)
    FlaskInstrumentor.instrument_app(app, tracer_provider=PROVIDER)
    try:
        with app.test_client() as client:
            response = client.post("/orders", headers={"traceparent": TRACEPARENT})
        assert response.status_code == 201, response.text
        body = response.get_json()
        downstream = asyncio.run(continue_downstream(app_db.url, body["saga_id"]))
    finally:
        FlaskInstrumentor.uninstrument_app(app)
    assert downstream.message.id == body["event_id"]
    check_one_trace(
        exporter.get_finished_spans(),
        downstream,
        saga_name="integration-order",
        saga_id=body["saga_id"],
        steps=["reserve", "charge"],
    )
