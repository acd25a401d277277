"""The health blueprint: ``GET /sagaz/health``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from sagaz.integrations.flask.state import current_state

__all__ = ["create_health_blueprint", "health_blueprint"]


def create_health_blueprint(
    *, path: str = "/sagaz/health", name: str = "sagaz_health", url_prefix: str | None = None
) -> Blueprint:
    """A blueprint with ``GET {path}``: 200 with ``{"status": "ok", "database": "ok",
    "outbox": {"pending", "dead", "oldest_pending_age_seconds"}}`` when the app's sagaz
    database answers, 503 with ``{"status": "unavailable", ...}`` when it does not.
    Needs the SagazExtension on the app.

    `path` and `name` are the parameters of every adapter's health factory (FastAPI's
    `create_health_router`, Django's `health_urls`). `url_prefix` is the older way to
    move it: ``url_prefix="/x"`` serves ``GET /x/health``.
    """
    if url_prefix is not None:
        path = url_prefix.rstrip("/") + "/health"
    blueprint = Blueprint(name, __name__)

    @blueprint.get(path)
    def sagaz_health() -> tuple[dict[str, Any], int]:
        report = current_state().health()
        return report.as_dict(), report.status_code

    return blueprint


health_blueprint = create_health_blueprint()
"""``app.register_blueprint(health_blueprint)`` serves ``GET /sagaz/health``."""
