"""The health view: ``GET /sagaz/health`` as in the other integrations.

urlpatterns = [path("sagaz/", include("sagaz.integrations.django.urls")), ...]
"""

from __future__ import annotations

import threading

import sqlalchemy as sa
from django.core.signals import setting_changed
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.urls import URLPattern
from django.urls import path as url_path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

from sagaz.integrations._core.health import check_health_sync
from sagaz.integrations.django.conf import database_url, get_settings
from sagaz.store.engines import create_engine

__all__ = ["health", "health_urls"]

HEALTH_CONNECT_TIMEOUT_SECONDS = 5

_lock = threading.Lock()
_engines: dict[str, sa.Engine] = {}


def _engine(alias: str) -> sa.Engine:
    """A pool-less engine on `alias`: each check opens one short connection and closes
    it, so the health view keeps no connection of its own between checks."""
    with _lock:
        engine = _engines.get(alias)
        if engine is None:
            url = sa.make_url(database_url(alias))
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                url = url.update_query_dict(
                    {"connect_timeout": str(HEALTH_CONNECT_TIMEOUT_SECONDS)}
                )
            engine = _engines[alias] = create_engine(url, poolclass=sa.NullPool)
        return engine


def _forget(*, setting: str, **_kwargs: object) -> None:
    if setting in ("SAGAZ", "DATABASES"):
        with _lock:
            _engines.clear()


setting_changed.connect(_forget, dispatch_uid="sagaz.integrations.django.views")


@never_cache
@require_safe
@transaction.non_atomic_requests
def health(request: HttpRequest) -> JsonResponse:
    """200 with ``{"status": "ok", "database": "ok", "outbox": {"pending", "dead",
    "oldest_pending_age_seconds"}}`` when sagaz's database answers, 503 with
    ``{"status": "unavailable", "database": "unavailable", "error": "<type>"}`` when it
    does not (the details are logged, not served). Never inside ATOMIC_REQUESTS'
    transaction: it holds no lock while it checks."""
    report = check_health_sync(_engine(get_settings().database))
    return JsonResponse(report.as_dict(), status=report.status_code)


def health_urls(*, path: str = "sagaz/health", name: str = "sagaz_health") -> list[URLPattern]:
    """URL patterns serving the `health` view at ``GET {path}`` under route name `name`:
    ``urlpatterns += health_urls()``. `path` and `name` are the parameters of every
    adapter's health factory (FastAPI's `create_health_router`, Flask's
    `create_health_blueprint`); ``include("sagaz.integrations.django.urls")`` remains
    the other way to mount it."""
    return [url_path(path.lstrip("/"), health, name=name)]
