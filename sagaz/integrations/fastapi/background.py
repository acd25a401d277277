"""`run_saga_background`: a saga recorded durably now and run after the response."""

from __future__ import annotations

from collections.abc import Coroutine, Mapping
from typing import Any, overload

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from starlette.background import BackgroundTasks

from sagaz.background import BackgroundRun
from sagaz.config import SagaConfig
from sagaz.runtime import SagaRuntime, find_runtime
from sagaz.saga import Saga

__all__ = ["run_saga_background"]


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
