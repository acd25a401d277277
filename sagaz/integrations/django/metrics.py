"""The metrics view: sagaz's Prometheus metrics (`sagaz.metrics`).

urlpatterns = [*metrics_urls(), ...]          # GET /metrics
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern
from django.urls import path as url_path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from sagaz.integrations._core.metrics import render_metrics

__all__ = ["metrics_urls", "metrics_view"]


def metrics_view(registry: Any = None) -> Callable[[HttpRequest], HttpResponse]:
    """A view answering with the Prometheus text exposition of `registry`
    (prometheus_client's default registry, where ``SAGAZ = {"METRICS": True}`` puts
    sagaz's metrics, when None)."""

    @never_cache
    @require_safe
    def sagaz_metrics(request: HttpRequest) -> HttpResponse:
        body, content_type = render_metrics(registry)
        return HttpResponse(body, content_type=content_type)

    return sagaz_metrics


def metrics_urls(
    *, path: str = "metrics", name: str = "sagaz_metrics", registry: Any = None
) -> list[URLPattern]:
    """``urlpatterns += metrics_urls()`` serves ``GET /metrics``."""
    return [url_path(path, metrics_view(registry), name=name)]
