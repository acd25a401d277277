"""One app's sagaz state - its settings, its config and, once used, its runtime on its
own event-loop portal - and where the extension keeps it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from flask import Flask, current_app, has_app_context
from flask_sqlalchemy import SQLAlchemy

from sagaz.config import SagaConfig
from sagaz.integrations._core.errors import SetupError
from sagaz.integrations._core.health import HealthReport, check_health, check_health_sync
from sagaz.integrations._core.portal import LazyPortal
from sagaz.runtime import SagaRuntime

__all__ = ["EXTENSION_KEY", "AppState", "current_state", "state_of"]

T = TypeVar("T")
P = ParamSpec("P")

EXTENSION_KEY = "sagaz"
"""The extension is stored as ``app.extensions["sagaz"]``."""

_states: WeakKeyDictionary[Flask, AppState] = WeakKeyDictionary()


class AppState:
    """One app's settings and, once used, its runtime on its own event-loop portal."""

    def __init__(
        self,
        name: str,
        config: SagaConfig,
        db: SQLAlchemy | None,
        *,
        bind_key: str | None,
        correlation_header: str,
        shutdown_grace_seconds: float,
    ) -> None:
        self.name = name
        self.config = config
        self.db = db
        self.bind_key = bind_key
        self.correlation_header = correlation_header
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.schema_checked = False
        """True once `hooks` found sagaz's tables at their revision."""
        self._portal = LazyPortal(f"sagaz-flask-{name}", self._runtime)

    def _runtime(self) -> SagaRuntime:
        return SagaRuntime(self.config, shutdown_grace_seconds=self.shutdown_grace_seconds)

    def call(self, function: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function` on this app's portal (started with the runtime on first use)."""
        return self._portal.call(function, *args, **kwargs)

    def health(self) -> HealthReport:
        """The health report of the app's sagaz database (reachable? outbox counts)."""
        if not self.config.database_url:
            return check_health_sync(None)
        return self.call(_check_health, self.config)

    def close(self) -> None:
        self._portal.close()


async def _check_health(config: SagaConfig) -> HealthReport:
    return await check_health(config.engine)


def register(app: Flask, state: AppState) -> None:
    _states[app] = state


def state_of(app: Flask) -> AppState | None:
    """The state of `app`, None when no extension is registered on it."""
    return _states.get(app)


def current_app_object() -> Flask | None:
    """The current Flask app, None outside an application context."""
    if not has_app_context():
        return None
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    return app


def current_state() -> AppState:
    """The state of the current app. Raises SetupError when there is no app context or
    no extension registered on the app."""
    app = current_app_object()
    if app is None:
        raise SetupError(
            "no Flask application context: call this inside a request or "
            "`with app.app_context():`, or pass app="
        )
    state = state_of(app)
    if state is None:
        raise SetupError("SagazExtension is not registered on this app: call sagaz.init_app(app)")
    return state
