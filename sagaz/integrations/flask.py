"""Flask integration: a Flask-SQLAlchemy extension whose sagas and outbox events commit
with ``db.session``.

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from sagaz import outbox
    from sagaz.integrations.flask import SagazExtension, health_blueprint

    db = SQLAlchemy()
    sagaz = SagazExtension()

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://app@db/app"
    db.init_app(app)
    sagaz.init_app(app, db)                     # sagaz's tables live in the same database
    app.register_blueprint(health_blueprint)    # optional: GET /sagaz/health

    @app.post("/orders")
    def create_order():
        order = Order(total=42); db.session.add(order); db.session.flush()
        saga_id = sagaz.start_saga(OrderSaga, {"order_id": order.id})   # for a worker
        outbox.add(db.session, "orders.created", {"order_id": order.id})
        db.session.commit()             # the order, the saga and the event - or none
        return {"saga_id": saga_id}, 201

    @app.post("/quotes")
    def quote():                        # runs the saga here; the request waits for it
        return {"status": sagaz.run_sync(QuoteSaga, request.json).status.value}

Flask and Flask-SQLAlchemy are imported only here. See docs/flask.md.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import fields
from itertools import chain
from typing import Any, ParamSpec, TypeVar
from weakref import WeakKeyDictionary

from sagaz.errors import MissingExtraError

try:
    from flask import Blueprint, Flask, Response, current_app, g, has_app_context, request
    from flask.cli import with_appcontext
    from flask_sqlalchemy import SQLAlchemy
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise MissingExtraError("flask", error.name or "flask", "sagaz.integrations.flask") from error

import click
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from sagaz.cli.db import db as db_command
from sagaz.cli.dlq import dlq as dlq_command
from sagaz.cli.listing import list_sagas as list_command
from sagaz.cli.worker import worker as worker_command
from sagaz.config import SagaConfig
from sagaz.context import RequestContext, SagaContextManager
from sagaz.errors import ConfigurationError, CrossBindError
from sagaz.integrations._base import (
    CORRELATION_ID_HEADER,
    HealthReport,
    LazyPortal,
    SagaRuntime,
    check_health,
    check_health_sync,
    correlation_id_from,
    finish_session_sync,
    validate_header_name,
)
from sagaz.saga import Saga
from sagaz.start import start_saga
from sagaz.store.schema_check import check_schema
from sagaz.store.unit_of_work import BIND_ARGUMENTS_KEY
from sagaz.types import SagaResult

__all__ = [
    "EXTENSION_KEY",
    "CrossBindError",
    "SagazExtension",
    "create_health_blueprint",
    "health_blueprint",
    "sagaz_cli",
]

log = logging.getLogger("sagaz.integrations.flask")
S = TypeVar("S", bound=Saga)
T = TypeVar("T")
P = ParamSpec("P")

EXTENSION_KEY = "sagaz"
"""The extension is stored as ``app.extensions["sagaz"]``."""

_SAGA_SETTINGS = frozenset(spec.name for spec in fields(SagaConfig) if spec.init)
_EXTENSION_DEFAULTS: dict[str, Any] = {
    "bind_key": None,
    "correlation_header": CORRELATION_ID_HEADER,
    "shutdown_grace_seconds": 10.0,
}
_ENV_NOTE = re.compile(r"\s*\(env: [^)]*\)")
_TOKEN_KEY = "_sagaz_context_token"
_WRITTEN_BINDS_KEY = "sagaz.flask.written_binds"


# -- the extension ---------------------------------------------------------------------


class SagazExtension:
    """sagaz for Flask applications, in the usual extension pattern.

    ``SagazExtension(app, db)``, or ``ext = SagazExtension()`` and later
    ``ext.init_app(app, db)`` (application factories). One extension may serve several
    applications; each gets its own settings and resources.

    Settings are `SagaConfig` fields plus ``bind_key``, ``correlation_header`` and
    ``shutdown_grace_seconds``, given as keyword arguments or as ``SAGAZ_<NAME>`` keys
    in ``app.config`` - which take precedence (like Flask-SQLAlchemy's engine options).
    String values (e.g. from environment variables) are converted as
    `SagaConfig.from_env` does. An unknown ``SAGAZ_*`` key or keyword is an error.

    With ``db`` (the application's Flask-SQLAlchemy instance), sagaz's tables live on the
    bind named by ``SAGAZ_BIND_KEY`` (default: the default bind) and
    ``SAGAZ_DATABASE_URL`` defaults to that bind's URL. Saga starts and outbox events
    made through ``db.session`` are written on that bind in the session's own
    transaction: they commit with ``db.session.commit()`` and vanish with
    ``db.session.rollback()``. A unit of work that also writes application rows on
    another bind raises `CrossBindError` naming both.
    """

    def __init__(
        self, app: Flask | None = None, db: SQLAlchemy | None = None, **config: Any
    ) -> None:
        unknown = sorted(set(config) - _SAGA_SETTINGS - set(_EXTENSION_DEFAULTS))
        if unknown:
            raise ConfigurationError(f"unknown sagaz setting(s): {', '.join(unknown)}")
        self.db = db
        self.options = dict(config)
        self._states: WeakKeyDictionary[Flask, _AppState] = WeakKeyDictionary()
        if app is not None:
            self.init_app(app, db)

    def init_app(self, app: Flask, db: SQLAlchemy | None = None) -> None:
        """Register the extension on `app`: read its settings, bind sagaz to ``db``'s
        session, and register the request hooks and the ``flask sagaz`` commands.

        Raises RuntimeError when a SagazExtension is already registered on `app`, or
        when `db` was not initialised on `app` first; ConfigurationError for an invalid
        setting. Opens nothing: the event loop, engine and pool start on first use
        (`run_sync`, the health check) - so `flask` CLI commands and servers that fork
        after loading the app (``gunicorn --preload``) start no thread or connection in
        the parent - and live until `close()` or interpreter exit, never per request.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'SagazExtension' instance has already been registered on this Flask "
                "app. Import and use that instance instead."
            )
        db = db if db is not None else self.db
        if db is not None and app.extensions.get("sqlalchemy") is not db:
            raise RuntimeError(
                "the Flask-SQLAlchemy 'db' given to SagazExtension is not registered on this "
                "app: call db.init_app(app) before sagaz.init_app(app, db)"
            )
        state = _AppState.from_app(app, db, self.options)
        self._states[app] = state
        app.extensions[EXTENSION_KEY] = self
        # Opened first and closed last, so every other hook of the request sees it.
        app.before_request_funcs.setdefault(None, []).insert(0, _open_request_context)
        app.after_request_funcs.setdefault(None, []).append(_echo_correlation_id)
        app.teardown_request_funcs.setdefault(None, []).insert(0, _close_request_context)
        app.before_request(_check_schema_once)
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
        state = self._state(app)
        if not state.config.database_url:
            return check_health_sync(None)
        return state.call(_check_health, state.config)

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop what sagaz started for every app (its runtime, engine and pool, the
        event-loop thread) and wait for it. Idempotent; a later use starts afresh. Also
        runs at interpreter exit. The Flask-SQLAlchemy engines are the db's, not closed
        here."""
        for state in list(self._states.values()):
            state.close()

    def _state(self, app: Flask | None = None) -> _AppState:
        if app is None:
            if has_app_context():
                app = current_app._get_current_object()  # type: ignore[attr-defined]
            else:
                states = list(self._states.values())
                if len(states) == 1:
                    return states[0]
                raise RuntimeError(
                    "no Flask application context: call this inside a request or "
                    "`with app.app_context():`, or pass app="
                )
        state = self._states.get(app)
        if state is None:
            raise RuntimeError(
                "SagazExtension is not registered on this app: call sagaz.init_app(app)"
            )
        return state


class _AppState:
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
        self._portal = LazyPortal(f"sagaz-flask-{name}", self._runtime)

    def _runtime(self) -> SagaRuntime:
        return SagaRuntime(self.config, shutdown_grace_seconds=self.shutdown_grace_seconds)

    @classmethod
    def from_app(cls, app: Flask, db: SQLAlchemy | None, options: Mapping[str, Any]) -> _AppState:
        settings = _settings(app, options)
        header = validate_header_name(
            settings.pop("correlation_header"), setting="SAGAZ_CORRELATION_HEADER"
        )
        bind_key = settings.pop("bind_key")
        grace = _grace_seconds(settings.pop("shutdown_grace_seconds"))
        if db is not None:
            engine = _bind_engine(app, db, bind_key)
            if "database_url" not in settings:
                settings["database_url"] = _url_of(engine, bind_key)
        environ = {f"SAGAZ_{k.upper()}": v for k, v in settings.items() if isinstance(v, str)}
        typed = {k: v for k, v in settings.items() if not isinstance(v, str)}
        config = SagaConfig.from_env(environ, **typed)
        if db is not None:
            _hook_session_factory(db)
        return cls(
            app.name,
            config,
            db,
            bind_key=bind_key,
            correlation_header=header,
            shutdown_grace_seconds=grace,
        )

    def call(self, function: Callable[P, Awaitable[T]], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `function` on this app's portal (started with the runtime on first use)."""
        return self._portal.call(function, *args, **kwargs)

    def close(self) -> None:
        self._portal.close()


def _settings(app: Flask, options: Mapping[str, Any]) -> dict[str, Any]:
    """Keyword options overlaid by the app's ``SAGAZ_*`` keys (names lowercased)."""
    known = _SAGA_SETTINGS | set(_EXTENSION_DEFAULTS)
    from_app: dict[str, Any] = {}
    unknown: list[str] = []
    for key, value in app.config.items():
        if not key.startswith("SAGAZ_"):
            continue
        name = key[len("SAGAZ_") :].lower()
        if name in known:
            from_app[name] = (
                value.render_as_string(hide_password=False) if isinstance(value, sa.URL) else value
            )
        else:
            unknown.append(key)
    if unknown:
        raise ConfigurationError(f"unknown sagaz setting(s) in app.config: {', '.join(unknown)}")
    settings = {**_EXTENSION_DEFAULTS, **options, **from_app}
    if settings.get("database_url") == "":
        settings["database_url"] = None
    return settings


def _grace_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not seconds >= 0:
        raise ConfigurationError(
            f"SAGAZ_SHUTDOWN_GRACE_SECONDS must be a number >= 0, got {value!r}"
        )
    return seconds


def _bind_engine(app: Flask, db: SQLAlchemy, bind_key: str | None) -> sa.Engine:
    with app.app_context():
        engines = db.engines
    if bind_key not in engines:
        known = ", ".join(repr(key) for key in engines)
        raise ConfigurationError(
            f"SAGAZ_BIND_KEY {bind_key!r} is not a bind of the app's db (binds: {known})"
        )
    return engines[bind_key]


def _url_of(engine: sa.Engine, bind_key: str | None) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            f"bind {bind_key!r} is an in-memory SQLite database, which sagaz's own engine "
            "cannot share: use a file, or set SAGAZ_DATABASE_URL (None: sagas run in "
            "memory only)"
        )
    return url.render_as_string(hide_password=False)


async def _check_health(config: SagaConfig) -> HealthReport:
    return await check_health(config.engine)


# -- request hooks -----------------------------------------------------------------------


def _app_state() -> _AppState:
    extension: SagazExtension = current_app.extensions[EXTENSION_KEY]
    return extension._state(current_app._get_current_object())  # type: ignore[attr-defined]


def _check_schema_once() -> None:
    """Before the app's first request, until it passes: sagaz's tables at their revision?"""
    state = _app_state()
    if not state.schema_checked and state.config.database_url:
        db, url = state.db, state.config.database_url
        check_schema(url if db is None else _bind_engine(current_app, db, state.bind_key))
    state.schema_checked = True


def _open_request_context() -> None:
    """Make the request's correlation id current (``g.sagaz_context``)."""
    header = _app_state().correlation_header
    correlation_id = correlation_id_from(request.headers.get(header))
    setattr(g, _TOKEN_KEY, SagaContextManager.set(correlation_id))
    g.sagaz_context = SagaContextManager.get()


def _echo_correlation_id(response: Response) -> Response:
    context: RequestContext | None = g.get("sagaz_context")
    header = _app_state().correlation_header
    if context is not None and header not in response.headers:
        response.headers[header] = context.correlation_id
    return response


def _close_request_context(error: BaseException | None) -> None:
    """Roll back what a request that raised left in ``db.session`` (the commit/rollback
    policy of `finish_session_sync`; Flask-SQLAlchemy also removes the session when the
    app context ends), then restore the previous correlation id."""
    try:
        db = _app_state().db
        if error is not None and db is not None and db.session.registry.has():
            finish_session_sync(db.session(), error)
    finally:
        token = g.pop(_TOKEN_KEY, None)
        if token is not None:
            try:
                SagaContextManager.reset(token)
            except ValueError:  # set in another context (e.g. a copied one): let it go
                log.debug("sagaz: request context was set in another context", exc_info=True)


# -- binds ------------------------------------------------------------------------------


def _hook_session_factory(db: SQLAlchemy) -> None:
    """Every ``db.session`` chooses the connection for sagaz's rows with `_choose_bind`
    (unless the application set its own ``sagaz.bind_arguments``)."""
    factory = db.session.session_factory
    info = dict(factory.kw.get("info") or {})
    if BIND_ARGUMENTS_KEY not in info:
        info[BIND_ARGUMENTS_KEY] = _choose_bind
        factory.configure(info=info)


def _binds_of(session: Session) -> tuple[_AppState, Mapping[str | None, sa.Engine]] | None:
    """The current app's sagaz state and its db's engines, when `session` is one of the
    extension's ``db.session`` sessions in an app context; else None."""
    if session.info.get(BIND_ARGUMENTS_KEY) is not _choose_bind or not has_app_context():
        return None
    extension = current_app.extensions.get(EXTENSION_KEY)
    if not isinstance(extension, SagazExtension):
        return None
    state = extension._states.get(current_app._get_current_object())  # type: ignore[attr-defined]
    if state is None or state.db is None:
        return None
    return state, state.db.engines


def _choose_bind(session: Session) -> Mapping[str, Any]:
    """Bind arguments for sagaz's rows in `session`: the sagaz bind of the current app,
    refused (CrossBindError) when the unit of work writes application rows elsewhere."""
    found = _binds_of(session)
    if found is None:
        return {}
    state, engines = found
    target = engines[state.bind_key]
    if len(engines) == 1:
        return {"bind": target}
    stray = [bind for bind in _written_binds(session) if bind is not target]
    if stray:
        names = {id(engine): key for key, engine in engines.items()}
        others = ", ".join(sorted({_bind_name(names.get(id(bind))) for bind in stray}))
        raise CrossBindError(
            f"sagaz's rows go to bind {_bind_name(state.bind_key)} (SAGAZ_BIND_KEY) but "
            f"this unit of work also writes application rows on bind {others}: they "
            "would commit in different transactions. Write them in separate units of "
            "work, or keep the models that travel with sagas on the sagaz bind."
        )
    return {"bind": target}


def _bind_name(key: str | None) -> str:
    return "None (the default bind)" if key is None else repr(key)


def _written_binds(session: Session) -> set[Any]:
    """Binds of application rows written in the session's transaction: those flushed
    or executed earlier (recorded) and those pending now."""
    binds: set[Any] = set(session.info.get(_WRITTEN_BINDS_KEY, ()))
    binds.update(_pending_binds(session))
    return binds


def _pending_binds(session: Session) -> set[Any]:
    dirty = (obj for obj in session.dirty if session.is_modified(obj))
    mappers = {sa.inspect(obj).mapper for obj in chain(session.new, session.deleted, dirty)}
    return {session.get_bind(mapper=mapper) for mapper in mappers}


def _recording(session: Session) -> bool:
    """Record written binds only where there is more than one to tell apart."""
    found = _binds_of(session)
    return found is not None and len(found[1]) > 1


def _record_flushed_binds(session: Session, _flush_context: Any) -> None:
    if _recording(session):
        # after_flush still shows the pre-flush new/dirty/deleted collections
        binds = _pending_binds(session)
        if binds:
            session.info.setdefault(_WRITTEN_BINDS_KEY, set()).update(binds)


def _record_executed_binds(state: ORMExecuteState) -> None:
    if (state.is_insert or state.is_update or state.is_delete) and _recording(state.session):
        bind = state.session.get_bind(**state.bind_arguments)
        state.session.info.setdefault(_WRITTEN_BINDS_KEY, set()).add(bind)


def _forget_binds(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WRITTEN_BINDS_KEY, None)


# Registered once, on the sync Session class; each returns at once for a session whose
# factory the extension did not hook.
event.listen(Session, "after_flush", _record_flushed_binds)
event.listen(Session, "do_orm_execute", _record_executed_binds)
event.listen(Session, "after_transaction_end", _forget_binds)


# -- flask sagaz ------------------------------------------------------------------------

_APP_DEFAULTS: dict[str, str] = {
    "database_url": "SAGAZ_DATABASE_URL",
    "broker_url": "SAGAZ_BROKER_URL",
    "lease_seconds": "SAGAZ_LEASE_SECONDS",
}


def _from_app_config(name: str) -> Callable[[], Any]:
    def default() -> Any:
        value = getattr(_app_state().config, name)
        if value is None:
            raise click.UsageError(
                f"the app has no {_APP_DEFAULTS[name]} (nor a Flask-SQLAlchemy db to take "
                "it from): set it, or pass the option"
            )
        return value

    return default


def _with_app_defaults(command: click.Command) -> click.Command:
    """A copy of a `sagaz` command whose database, broker and lease options default to
    the current app's settings instead of the environment."""
    mounted = copy.copy(command)
    mounted.params = [_app_param(param) for param in command.params]
    if isinstance(command, click.Group):
        assert isinstance(mounted, click.Group)
        mounted.commands = {name: _with_app_defaults(sub) for name, sub in command.commands.items()}
    return mounted


def _app_param(param: click.Parameter) -> click.Parameter:
    if param.name not in _APP_DEFAULTS or not isinstance(param, click.Option):
        return param
    option = copy.copy(param)
    option.envvar = None
    option.default = _from_app_config(param.name)
    option.show_default = f"the app's {_APP_DEFAULTS[param.name]}"
    option.help = _ENV_NOTE.sub("", option.help or "")
    return option


@click.group("sagaz")
@with_appcontext
def sagaz_cli() -> None:
    """sagaz for this app: workers, sagas, migrations, dead letters.

    Database, broker and lease settings come from the app's SAGAZ_* config (the
    database defaults to its Flask-SQLAlchemy bind); options override them.
    """


def _mount(commands: Iterable[click.Command]) -> None:
    for command in commands:
        sagaz_cli.add_command(_with_app_defaults(command))


_mount([worker_command, list_command, db_command, dlq_command])


# -- health -----------------------------------------------------------------------------


def create_health_blueprint(*, url_prefix: str = "/sagaz", name: str = "sagaz_health") -> Blueprint:
    """A blueprint with ``GET {url_prefix}/health``: 200 with ``{"status": "ok",
    "database": "ok", "outbox": {"pending", "dead", "oldest_pending_age_seconds"}}`` when
    the app's sagaz database answers, 503 with ``{"status": "unavailable", ...}`` when it
    does not. Needs the SagazExtension on the app."""
    blueprint = Blueprint(name, __name__, url_prefix=url_prefix)

    @blueprint.get("/health")
    def sagaz_health() -> tuple[dict[str, Any], int]:
        extension: SagazExtension = current_app.extensions[EXTENSION_KEY]
        report = extension.health()
        return report.as_dict(), report.status_code

    return blueprint


health_blueprint = create_health_blueprint()
"""``app.register_blueprint(health_blueprint)`` serves ``GET /sagaz/health``."""
