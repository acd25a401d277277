"""The metrics blueprint: ``GET /metrics`` (sagaz's Prometheus metrics, `sagaz.metrics`)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from sagaz.integrations._core.metrics import render_metrics

__all__ = ["create_metrics_blueprint"]


def create_metrics_blueprint(
    *, path: str = "/metrics", name: str = "sagaz_metrics", registry: Any = None
) -> Blueprint:
    """A blueprint with ``GET {path}``: the Prometheus text exposition of `registry`
    (prometheus_client's default registry, where ``SAGAZ_METRICS = True`` puts sagaz's
    metrics, when None). ``app.register_blueprint(create_metrics_blueprint())``."""
    blueprint = Blueprint(name, __name__)

    @blueprint.get(path)
    def sagaz_metrics() -> Response:
        body, content_type = render_metrics(registry)
        return Response(body, content_type=content_type)

    return blueprint
