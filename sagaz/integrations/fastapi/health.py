"""The health router: ``GET /sagaz/health``.

No ``from __future__ import annotations`` here: FastAPI reads the endpoint's annotations
at runtime.
"""

from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.responses import JSONResponse

from sagaz.config import SagaConfig
from sagaz.integrations._core.health import check_health
from sagaz.integrations.fastapi.dependencies import get_config

__all__ = ["create_health_router", "health_router"]


def create_health_router(
    *, path: str = "/sagaz/health", name: str = "sagaz_health", tags: list[str] | None = None
) -> APIRouter:
    """An APIRouter with ``GET {path}`` (route name `name`): 200 with ``{"status": "ok",
    "database": "ok", "outbox": {"pending", "dead", "oldest_pending_age_seconds"}}`` when
    the database answers, 503 with ``{"status": "unavailable", ...}`` when it does not.

    `path` and `name` are the parameters of every adapter's health factory (Flask's
    `create_health_blueprint`, Django's `health_urls`)."""
    router = APIRouter(tags=list(tags) if tags is not None else ["sagaz"])

    @router.get(path, name=name)
    async def sagaz_health(
        config: Annotated[SagaConfig, Depends(get_config)],
    ) -> JSONResponse:
        engine = config.engine if config.database_url else None
        report = await check_health(engine)
        return JSONResponse(report.as_dict(), status_code=report.status_code)

    return router


health_router = create_health_router()
"""``app.include_router(health_router)`` serves ``GET /sagaz/health``."""
