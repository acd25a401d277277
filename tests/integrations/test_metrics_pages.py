"""Each framework serves sagaz's Prometheus metrics with a one-line helper."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from flask import Flask
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sagaz.integrations.fastapi.metrics import create_metrics_router
from sagaz.integrations.flask.metrics import create_metrics_blueprint
from sagaz.metrics import metrics_for


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics_for(registry).lease_lost()
    return registry


def lease_losses(text: str) -> float:
    families = {family.name: family for family in text_string_to_metric_families(text)}
    (sample,) = families["sagaz_worker_lease_losses"].samples[:1]
    return float(sample.value)


def test_fastapi_router_serves_the_metrics(registry: CollectorRegistry) -> None:
    app = FastAPI()
    app.include_router(create_metrics_router(path="/ops/metrics", registry=registry))
    with TestClient(app) as client:
        response = client.get("/ops/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert lease_losses(response.text) == 1.0
    assert "/ops/metrics" not in app.openapi()["paths"]


def test_flask_blueprint_serves_the_metrics(registry: CollectorRegistry) -> None:
    app = Flask(__name__)
    app.register_blueprint(create_metrics_blueprint(registry=registry))
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert lease_losses(response.get_data(as_text=True)) == 1.0
