"""Django serves sagaz's Prometheus metrics through `metrics_urls`."""

from __future__ import annotations

from django.test import RequestFactory
from django.urls import URLResolver
from django.urls.resolvers import RegexPattern
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from sagaz.integrations.django.metrics import metrics_urls
from sagaz.metrics import metrics_for


def test_metrics_urls_serve_the_metrics() -> None:
    registry = CollectorRegistry()
    metrics_for(registry).claim_failed()
    resolver = URLResolver(
        RegexPattern(r"^/"), metrics_urls(path="ops/metrics", name="m", registry=registry)
    )
    match = resolver.resolve("/ops/metrics")
    assert resolver.reverse("m") == "ops/metrics"
    response = match.func(RequestFactory().get("/ops/metrics"))
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.content.decode())}
    assert families["sagaz_worker_claim_failures"].samples[0].value == 1.0
    refused = match.func(RequestFactory().post("/ops/metrics"))
    assert refused.status_code == 405
