"""`create_lifespan`: sagaz's runtime started and stopped with the application."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import Lifespan

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.runtime import SagaRuntime
from sagaz.store.schema_check import check_schema_async

__all__ = ["STATE_KEY", "create_lifespan", "runtime_of"]

STATE_KEY = "sagaz"


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


def runtime_of(connection: HTTPConnection) -> SagaRuntime:
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
