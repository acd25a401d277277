"""FastAPI integration: lifespan, session dependency, saga injection, durable background
runs, correlation-id middleware and a health router.

    from fastapi import Depends, FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession
    from sagaz import outbox, start_saga
    from sagaz.integrations.fastapi import (
        SagaContextMiddleware, create_lifespan, get_saga_session, health_router,
    )

    app = FastAPI(lifespan=create_lifespan())          # SAGAZ_* environment variables
    app.add_middleware(SagaContextMiddleware)
    app.include_router(health_router)

    @app.post("/orders", status_code=201)
    async def create_order(session: AsyncSession = Depends(get_saga_session)):
        order = Order(total=42); session.add(order); await session.flush()
        saga_id = start_saga(session, OrderSaga, {"order_id": order.id})
        outbox.add(session, "orders.created", {"order_id": order.id})
        return {"saga_id": saga_id}   # committed - all three rows - before this is sent

FastAPI is imported only here (this module deliberately has no ``from __future__ import
annotations``: FastAPI reads the dependency annotations at runtime). See docs/fastapi.md.
"""

from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Annotated, Any, Generic, TypeVar, overload

from sagaz.errors import MissingExtraError

try:
    import fastapi
    from fastapi import APIRouter, Depends
    from starlette.background import BackgroundTasks
    from starlette.requests import HTTPConnection
    from starlette.responses import JSONResponse
    from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise MissingExtraError("fastapi", "fastapi", "sagaz.integrations.fastapi") from error

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sagaz.config import SagaConfig
from sagaz.context import SagaContextManager
from sagaz.errors import ConfigurationError
from sagaz.integrations._base import (
    CORRELATION_ID_HEADER,
    BackgroundRun,
    SagaRuntime,
    check_health,
    correlation_id_from,
    find_runtime,
    finish_session,
    finish_session_sync,
    validate_header_name,
)
from sagaz.saga import Saga
from sagaz.store.schema_check import check_schema_async

__all__ = [
    "SagaContextMiddleware",
    "SagaFactory",
    "create_health_router",
    "create_lifespan",
    "get_config",
    "get_saga_session",
    "get_sync_saga_session",
    "health_router",
    "run_saga_background",
    "saga_factory",
]

MIN_FASTAPI_VERSION = (0, 121)
"""`Depends(..., scope="function")` - cleanup before the response is sent - came in 0.121."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(fastapi.__version__) < MIN_FASTAPI_VERSION:
    raise ImportError(
        f"sagaz.integrations.fastapi needs fastapi>=0.121 (Depends(scope='function') commits "
        f"before the response is sent), found {fastapi.__version__}; "
        "install it with: pip install 'sagaz[fastapi]'"
    )

STATE_KEY = "sagaz"
S = TypeVar("S", bound=Saga)


# -- lifespan --------------------------------------------------------------------------


def create_lifespan(
    config: SagaConfig | None = None,
    *,
    lifespan: Lifespan[Any] | None = None,
    run_worker: bool = False,
    run_relay: bool = False,
    worker_options: Mapping[str, Any] | None = None,
    relay_options: Mapping[str, Any] | None = None,
    shutdown_grace_seconds: float = 10.0,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A FastAPI/Starlette lifespan that runs sagaz with the application.

    At startup it initialises `config` (default: `SagaConfig.from_env()`, read at each
    startup) - its engine, pool and store - and, when asked, an in-process saga worker
    (`run_worker`) and outbox relay (`run_relay`, publishing to `config.broker_url`);
    both are off by default because production runs `sagaz worker`. `worker_options` and
    `relay_options` are passed to `SagaWorker` and `OutboxRelay`. At shutdown it stops
    them (in-flight sagas get `shutdown_grace_seconds`, then are released for another
    worker) and closes everything it opened; starting and stopping repeatedly leaves no
    connection, task or thread behind. A config that was already initialised is left
    open (whoever initialised it closes it).

    `lifespan` is the application's own lifespan: it runs inside sagaz's (sagaz is ready
    when it starts) and its state is merged into the lifespan state. Alternatively, enter
    this lifespan from your own: ``async with sagaz_lifespan(app) as state: ...``.
    """

    @asynccontextmanager
    async def sagaz_lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        runtime = SagaRuntime(
            config if config is not None else SagaConfig.from_env(),
            run_worker=run_worker,
            run_relay=run_relay,
            worker_options=worker_options,
            relay_options=relay_options,
            shutdown_grace_seconds=shutdown_grace_seconds,
        )
        await runtime.start()
        app_state = getattr(app, "state", None)
        try:
            if runtime.config.database_url:  # sagaz's tables at this sagaz's revision?
                await check_schema_async(runtime.config.engine)
            if app_state is not None:
                setattr(app_state, STATE_KEY, runtime)
            state: dict[str, Any] = {STATE_KEY: runtime}
            if lifespan is None:
                yield state
            else:
                async with lifespan(app) as own_state:
                    if own_state:
                        state.update(own_state)
                    yield state
        finally:
            if app_state is not None and getattr(app_state, STATE_KEY, None) is runtime:
                delattr(app_state, STATE_KEY)
            await runtime.stop()

    return sagaz_lifespan


def _runtime_of(connection: HTTPConnection) -> SagaRuntime:
    state = connection.scope.get("state")
    runtime = state.get(STATE_KEY) if isinstance(state, Mapping) else None
    if runtime is None:
        app = connection.scope.get("app")
        runtime = getattr(getattr(app, "state", None), STATE_KEY, None)
    if not isinstance(runtime, SagaRuntime) or not runtime.started:
        raise ConfigurationError(
            "sagaz is not running for this application: create it with "
            "FastAPI(lifespan=create_lifespan(config)) (in tests, enter the client: "
            "`with TestClient(app) as client:`)"
        )
    return runtime


# -- dependencies ----------------------------------------------------------------------


async def get_config(connection: HTTPConnection) -> SagaConfig:
    """Dependency: the `SagaConfig` the application's sagaz lifespan initialised.

    Raises ConfigurationError, saying to use `create_lifespan()`, when the lifespan has
    not run (e.g. before startup, or a TestClient not used as a context manager).
    """
    return _runtime_of(connection).config


async def _runtime(connection: HTTPConnection) -> SagaRuntime:
    return _runtime_of(connection)


async def _saga_session(
    runtime: Annotated[SagaRuntime, Depends(_runtime)],
) -> AsyncIterator[AsyncSession]:
    session = runtime.session()
    try:
        yield session
    except BaseException as error:
        await finish_session(session, error)
        raise
    else:
        await finish_session(session)


async def get_saga_session(
    session: Annotated[AsyncSession, Depends(_saga_session, scope="function")],
) -> AsyncSession:
    """Dependency, used as ``Depends(get_saga_session)``: an `AsyncSession` on the
    engine of the application's `SagaConfig`, one per request.

    The application's own ORM writes, `start_saga(session, ...)` and
    `outbox.add(session, ...)` through it commit together, **before the response is
    sent** (the session lives in a ``scope="function"`` dependency). If the endpoint
    raises - an HTTPException included - everything is rolled back. If the commit fails
    (e.g. a deferred constraint), it is rolled back and the exception propagates: the
    client gets an error response (500 unless the application handles that exception),
    never the endpoint's success response. `expire_on_commit=False`, so returned ORM
    objects stay readable.
    """
    return session


def _sync_saga_session(
    runtime: Annotated[SagaRuntime, Depends(_runtime)],
) -> Iterator[Session]:
    session = runtime.sync_session()
    try:
        yield session
    except BaseException as error:
        finish_session_sync(session, error)
        raise
    else:
        finish_session_sync(session)


async def get_sync_saga_session(
    session: Annotated[Session, Depends(_sync_saga_session, scope="function")],
) -> Session:
    """`get_saga_session` for sync (``def``) endpoints: a sync `Session` on the same
    database, with the same commit-before-response policy (the commit runs in FastAPI's
    thread pool, like the endpoint)."""
    return session


class SagaFactory(Generic[S]):
    """Dependency that injects ``saga_class(config=...)`` bound to the application's
    `SagaConfig`: its in-process runs (``await saga.run(ctx)``) use the configured store,
    defaults and listeners. Use it as ``Depends(saga_factory(OrderSaga))``."""

    def __init__(self, saga_class: type[S]) -> None:
        if not (isinstance(saga_class, type) and issubclass(saga_class, Saga)):
            raise TypeError(f"SagaFactory needs a Saga subclass, got {saga_class!r}")
        self.saga_class = saga_class

    def __call__(self, config: Annotated[SagaConfig, Depends(get_config)]) -> S:
        return self.saga_class(config=config)

    def __repr__(self) -> str:
        return f"SagaFactory({self.saga_class.__qualname__})"


def saga_factory(saga_class: type[S]) -> SagaFactory[S]:
    """``Depends(saga_factory(OrderSaga))`` injects an `OrderSaga` bound to the config."""
    return SagaFactory(saga_class)


# -- durable background runs -----------------------------------------------------------


@overload
def run_saga_background(
    background_tasks: BackgroundTasks,
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    session: Session | AsyncSession,
    idempotency_key: str | None = None,
    config: SagaConfig | None = None,
) -> str: ...
@overload
def run_saga_background(
    background_tasks: BackgroundTasks,
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    session: None = None,
    idempotency_key: str | None = None,
    config: SagaConfig | None = None,
) -> Coroutine[Any, Any, str]: ...
def run_saga_background(
    background_tasks: BackgroundTasks,
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    session: Session | AsyncSession | None = None,
    idempotency_key: str | None = None,
    config: SagaConfig | None = None,
) -> str | Coroutine[Any, Any, str]:
    """Record a saga durably now and run it in this process after the response; return
    its id at once.

    With `session` (e.g. from `get_saga_session`), the saga is recorded through it -
    atomically with the request's own writes - and returned directly. Without one, it is
    recorded in a short transaction of its own: ``saga_id = await
    run_saga_background(...)``. Either way the saga exists in the database before the
    response is sent.

    After the response (a FastAPI background task), and only once the recording
    transaction committed, this process claims the saga with a worker's lease and runs
    it, renewing the lease: if the process dies, the lease expires and a `sagaz worker`
    completes the saga; it never runs twice at once. A step failure is recorded on the
    saga (compensation, status, error). If the transaction rolls back, nothing runs.

    `config` picks the application when several run in one process.
    """
    runtime = find_runtime(config=config, session=session)
    if session is not None:
        saga_id, run = runtime.runner.record_in(
            session, saga, context, idempotency_key=idempotency_key
        )
        background_tasks.add_task(_release, run)
        return saga_id
    return _record_and_schedule(runtime, background_tasks, saga, context, idempotency_key)


async def _record_and_schedule(
    runtime: SagaRuntime,
    background_tasks: BackgroundTasks,
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    idempotency_key: str | None,
) -> str:
    saga_id, run = await runtime.runner.record(saga, context, idempotency_key=idempotency_key)
    background_tasks.add_task(_release, run)
    return saga_id


async def _release(run: BackgroundRun) -> None:
    run.release()


# -- correlation-id middleware ---------------------------------------------------------


class SagaContextMiddleware:
    """Pure ASGI middleware that gives each request a correlation id.

    The id comes from the `header_name` request header when it is at most 128
    characters of ``[A-Za-z0-9._:-]``; anything else (missing, too long, CR/LF,
    non-ASCII) is replaced by a fresh id and never reflected. Sagas started and outbox
    events added while the request is handled - background tasks included - record it
    (the `correlation-id` outbox header), and the response carries it in `header_name`
    (unless the application set that header itself). WebSocket connections get an id
    too; lifespan messages pass through untouched.
    """

    def __init__(self, app: ASGIApp, header_name: str = CORRELATION_ID_HEADER) -> None:
        self.app = app
        self.header_name = validate_header_name(header_name, setting="header_name")
        self._header = header_name.lower().encode("latin-1")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name.lower() == self._header:
                raw = value
                break
        correlation_id = correlation_id_from(raw)
        header = self._header

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == header for name, _value in headers):
                    headers.append((header, correlation_id.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        with SagaContextManager.scope(correlation_id):
            await self.app(scope, receive, send_with_id)


# -- health ----------------------------------------------------------------------------


def create_health_router(
    *, path: str = "/sagaz/health", tags: list[str] | None = None
) -> APIRouter:
    """An APIRouter with ``GET {path}``: 200 with ``{"status": "ok", "database": "ok",
    "outbox": {"pending", "dead", "oldest_pending_age_seconds"}}`` when the database
    answers, 503 with ``{"status": "unavailable", ...}`` when it does not."""
    router = APIRouter(tags=list(tags) if tags is not None else ["sagaz"])

    @router.get(path, name="sagaz_health")
    async def sagaz_health(
        config: Annotated[SagaConfig, Depends(get_config)],
    ) -> JSONResponse:
        engine = config.engine if config.database_url else None
        report = await check_health(engine)
        return JSONResponse(report.as_dict(), status_code=report.status_code)

    return router


health_router = create_health_router()
"""``app.include_router(health_router)`` serves ``GET /sagaz/health``."""
