"""The metrics router: ``GET /metrics`` (sagaz's Prometheus metrics, `sagaz.metrics`).

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations
at runtime.
"""

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from sagaz.integrations._core.metrics import render_metrics

__all__ = ["create_metrics_router"]


def create_metrics_router(
    *, path: str = "/metrics", name: str = "sagaz_metrics", registry: Any = None
) -> APIRouter:
    """An APIRouter with ``GET {path}``: the Prometheus text exposition of `registry`
    (prometheus_client's default registry, where `SagaConfig(metrics=True)` puts sagaz's
    metrics, when None), rendered in a thread (it reads the outbox gauges). Left out of
    the OpenAPI schema. ``app.include_router(create_metrics_router())``."""
    router = APIRouter(include_in_schema=False)

    @router.get(path, name=name)
    async def sagaz_metrics() -> Response:
        body, content_type = await run_in_threadpool(render_metrics, registry)
        return Response(body, media_type=content_type)

    return router
