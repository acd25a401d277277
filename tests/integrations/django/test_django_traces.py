"""One trace from a Django request to the consumer (sagaz.tracing), with Django's usual
OpenTelemetry instrumentation and nothing else: the example's ``POST /orders`` with a
``traceparent`` header starts an order saga whose charge is declined; the worker's run,
step and compensation spans, the relay's publish span and a Redis consumer's processing
span all join the request's trace. Real PostgreSQL and the real Redis on this machine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from django.test import Client
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sagaz.integrations.django.conf import database_url
from tests.observability.tracing_helpers import (
    PROVIDER,
    TRACEPARENT,
    check_one_trace,
    continue_downstream,
)


@pytest.fixture
def instrumented() -> Iterator[None]:
    """Django's OpenTelemetry middleware, for this test only."""
    instrumentor = DjangoInstrumentor()
    instrumentor.instrument(tracer_provider=PROVIDER)
    try:
        yield
    finally:
        instrumentor.uninstrument()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("instrumented")
def test_a_django_request_is_one_trace_to_the_consumer(exporter: InMemorySpanExporter) -> None:
    response = Client().post(
        "/orders",
        data=json.dumps({"item": "piano", "amount": "5000"}),  # over the card limit
        content_type="application/json",
        headers={"traceparent": TRACEPARENT},
    )
    assert response.status_code == 201, response.content
    saga_id = response.json()["saga_id"]
    downstream = asyncio.run(
        continue_downstream(database_url("default"), saga_id, final_status="compensated")
    )
    check_one_trace(
        exporter.get_finished_spans(),
        downstream,
        saga_name="django-order",
        saga_id=saga_id,
        steps=["reserve", "charge"],
        compensations=["reserve"],
    )
