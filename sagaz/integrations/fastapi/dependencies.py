"""The dependencies: the request's session (committed before the response is sent), the
config, and sagas bound to it.

No ``from __future__ import annotations`` here: FastAPI reads the dependency annotations
at runtime.
"""

from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Generic, TypeVar

from fastapi import Depends
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.requests import HTTPConnection

from sagaz.config import SagaConfig
from sagaz.integrations._core.commit import finish_session, finish_session_sync
from sagaz.integrations.fastapi.lifespan import runtime_of
from sagaz.runtime import SagaRuntime
from sagaz.saga import Saga

__all__ = [
    "SagaFactory",
    "get_config",
    "get_saga_session",
    "get_sync_saga_session",
    "saga_factory",
]

S = TypeVar("S", bound=Saga)


async def get_config(connection: HTTPConnection) -> SagaConfig:
    """Dependency: the `SagaConfig` the application's sagaz lifespan initialised.

    Raises ConfigurationError, saying to use `create_lifespan()`, when the lifespan has
    not run (e.g. before startup, or a TestClient not used as a context manager).
    """
    return runtime_of(connection).config


async def _runtime(connection: HTTPConnection) -> SagaRuntime:
    return runtime_of(connection)


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
