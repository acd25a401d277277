"""`SagazExtension`: sagaz for a Flask application, in the usual extension pattern."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar
from weakref import WeakSet

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.integrations._core.errors import SetupError
from sagaz.integrations._core.health import HealthReport
from sagaz.integrations.flask.binds import bind_engine, hook_session_factory, url_of
from sagaz.integrations.flask.cli import sagaz_cli
from sagaz.integrations.flask.hooks import register_hooks
from sagaz.integrations.flask.settings import read_flask_settings
from sagaz.integrations.flask.state import (
    EXTENSION_KEY,
    AppState,
    current_app_object,
    register,
    state_of,
)
from sagaz.saga import Saga
from sagaz.start import start_saga
from sagaz.types import SagaResult

__all__ = ["SagazExtension"]

S = TypeVar("S", bound=Saga)


class SagazExtension:
    """sagaz for Flask applications, in the usual extension pattern.

    ``SagazExtension(app, db)``, or ``ext = SagazExtension()`` and later
    ``ext.init_app(app, db)`` (application factories). One extension may serve several
    applications; each gets its own settings and resources.

    Settings are `SagaConfig` fields plus ``bind_key``, ``correlation_header`` and
    ``shutdown_grace_seconds`` (docs/settings.md lists them all), given as keyword
    arguments or as ``SAGAZ_<NAME>`` keys in ``app.config`` - which take precedence
    (like Flask-SQLAlchemy's engine options). String values (e.g. from environment
    variables) are converted as `SagaConfig.from_env` does. An unknown ``SAGAZ_*`` key or
    keyword is a ConfigurationError naming it.

    With ``db`` (the application's Flask-SQLAlchemy instance), sagaz's tables live on the
    bind named by ``SAGAZ_BIND_KEY`` (default: the default bind) and
    ``SAGAZ_DATABASE_URL`` defaults to that bind's URL. Saga starts and outbox events
    made through ``db.session`` are written on that bind in the session's own
    transaction: they commit with ``db.session.commit()`` and vanish with
    ``db.session.rollback()``. A unit of work that also writes application rows on
    another bind raises `CrossBindError` naming both.

    Setup mistakes (registered twice, ``db`` not initialised on the app, used outside an
    application) raise ConfigurationError - a `SetupError`, which is also a RuntimeError
    as earlier versions raised.
    """

    def __init__(
        self, app: Flask | None = None, db: SQLAlchemy | None = None, **config: Any
    ) -> None:
        read_flask_settings({}, config)  # an unknown keyword or bad value: refused now
        self.db = db
        self.options = dict(config)
        self._apps: WeakSet[Flask] = WeakSet()
        if app is not None:
            self.init_app(app, db)

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Register the extension on `app`: read its settings, bind sagaz to ``db``'s
        session, and register the request hooks and the ``flask sagaz`` commands.

        Raises ConfigurationError (a `SetupError`, also a RuntimeError) when a
        SagazExtension is already registered on `app` or when `db` was not initialised on
        `app` first, and ConfigurationError naming the key for an invalid setting. Opens
        nothing: the event loop, engine and pool start on first use (`run_sync`, the
        health check) - so `flask` CLI commands and servers that fork after loading the
        app (``gunicorn --preload``) start no thread or connection in the parent - and
        live until `close()` or interpreter exit, never per request.
        """
        if EXTENSION_KEY in app.extensions:
            raise SetupError(
                "A 'SagazExtension' instance has already been registered on this Flask "
                "app. Import and use that instance instead."
            )
        db = db if db is not None else self.db
        if db is not None and app.extensions.get("sqlalchemy") is not db:
            raise SetupError(
                "the Flask-SQLAlchemy 'db' given to SagazExtension is not registered on this "
                "app: call db.init_app(app) before sagaz.init_app(app, db)"
            )
        state = _build_state(app, db, self.options)
        register(app, state)
        self._apps.add(app)
        app.extensions[EXTENSION_KEY] = self
        register_hooks(app)
        app.cli.add_command(sagaz_cli)

    # -- what views call ------------------------------------------------------------------

    def config(self, app: Flask | None = None) -> SagaConfig:
        """The `SagaConfig` of `app` (default: the current app)."""
        return self._state(app).config

    def create_saga(self, saga_class: type[S], app: Flask | None = None) -> S:
        """``saga_class(config=...)``: a saga bound to the app's config - its store,
        step defaults and listeners - for `run_sync`."""
        if not (isinstance(saga_class, type) and issubclass(saga_class, Saga)):
            raise TypeError(f"create_saga needs a Saga subclass, got {saga_class!r}")
        return saga_class(config=self._state(app).config)

    def run_sync(
        self, saga: Saga | type[Saga], context: Mapping[str, Any] | None = None
    ) -> SagaResult:
        """Run `saga` (a class - bound with `create_saga` - or an instance) in this
        process to its end and return its result. **It blocks the calling request**
        until every step (and any compensation) has finished; for work a request should
        not wait for, use `start_saga` and a worker.

        The saga runs on the app's one long-lived event loop (a background thread
        started on first use), so the async engine and pool stay valid across requests
        and threads; it works from threaded servers, and from a thread whose own event
        loop is running (an async view: that loop waits meanwhile). The request's
        correlation id travels with it. A failed step is compensated and reported in
        the result (COMPENSATED / FAILED), not raised.
        """
        state = self._state()
        instance = self.create_saga(saga) if isinstance(saga, type) else saga
        if not isinstance(instance, Saga):
            raise TypeError(f"run_sync needs a Saga class or instance, got {saga!r}")
        return state.call(instance.run, dict(context or {}))

    def start_saga(
        self,
        saga: type[Saga] | Saga | str,
        context: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Record `saga` in ``db.session`` for a worker (``flask sagaz worker``) to run,
        and return its id - the durable counterpart of `run_sync`.

        This is `sagaz.start_saga` on ``db.session``: the saga row is written in the
        session's own transaction, so it exists only if the application commits
        (``db.session.commit()``), and with `idempotency_key` every repeat returns the
        same id. It carries the request's correlation id. Performs no I/O itself.
        """
        state = self._state()
        if state.db is None:
            raise ConfigurationError(
                "start_saga needs the application's Flask-SQLAlchemy db: "
                "SagazExtension(app, db) or sagaz.init_app(app, db)"
            )
        return start_saga(state.db.session(), saga, context, idempotency_key=idempotency_key)

    def health(self, app: Flask | None = None) -> HealthReport:
        """The health report of the app's sagaz database (reachable? outbox counts)."""
        return self._state(app).health()

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what sagaz started for every app (its runtime, engine and pool, the
        event-loop thread) and wait for it. Idempotent; a later use starts afresh. Also
        runs at interpreter exit. The Flask-SQLAlchemy engines are the db's, not closed
        here."""
        for app in list(self._apps):
            state = state_of(app)
            if state is not None:
                state.close()

    def _state(self, app: Flask | None = None) -> AppState:
        if app is None:
            app = current_app_object()
            if app is None:
                apps = list(self._apps)
                if len(apps) == 1:
                    app = apps[0]
                else:
                    raise SetupError(
                        "no Flask application context: call this inside a request or "
                        "`with app.app_context():`, or pass app="
                    )
        state = state_of(app) if app in self._apps else None
        if state is None:
            raise SetupError(
                "SagazExtension is not registered on this app: call sagaz.init_app(app)"
            )
        return state


def _build_state(app: Flask, db: SQLAlchemy | None, options: Mapping[str, Any]) -> AppState:
    """The app's settings read and checked; with `db`, sagaz's rows bound to its bind."""
    settings = read_flask_settings(app.config, options)
    defaults: dict[str, Any] = {}
    if db is not None:
        engine = bind_engine(app, db, settings.bind_key)
        if not settings.given("database_url"):
            defaults["database_url"] = url_of(engine, settings.bind_key)
    config = settings.saga_config(**defaults)
    if db is not None:
        hook_session_factory(db)
    return AppState(
        app.name,
        config,
        db,
        bind_key=settings.bind_key,
        correlation_header=settings.correlation_header,
        shutdown_grace_seconds=settings.shutdown_grace_seconds,
    )
