"""Calling the application's step and compensation functions: with a read-only copy of
the context, bounded by a timeout, as `sagaz.current_run()`, a plain `def` in sagaz's
step threads (`sagaz.engine.threads`), a step that takes a session inside the journal's
transaction.

A thread cannot be interrupted: when its attempt times out or is cancelled, the thread is
kept as a straggler of the run, and compensation waits for it (see `sagaz.engine`).
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
from collections.abc import Awaitable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from sagaz._json import ensure_json_object
from sagaz.definition import StepDefinition, StepFunction
from sagaz.engine.run import SagaRun
from sagaz.engine.threads import run_in_thread
from sagaz.errors import InvalidContextError, SagaDefinitionError, StepTimeoutError
from sagaz.journal import (
    TransactionalJournal,
    TransactionalStepCall,
    Transition,
    TransitionKind,
    notify_listeners,
)
from sagaz.run_context import reset_current_run, set_current_run
from sagaz.tracing import NO_SPAN, step_span
from sagaz.types import JSONDict

log = logging.getLogger("sagaz.engine")

T = TypeVar("T")


async def invoke(
    run: SagaRun,
    step: StepDefinition,
    limit: float | None,
    attempt: int,
    *,
    compensating: bool = False,
) -> Any:
    """Call a step's action (or, `compensating`, its compensation) with a read-only copy
    of the context, bounded by `limit`, as `current_run()`; not at all once the lease
    deadline passed (LeaseLostError). Raises StepTimeoutError when `limit` passed, and
    whatever the function raised."""
    name = step.name
    if run.lease is not None and not run.lease.held():
        what = f"compensation of step '{name}'" if compensating else f"step '{name}'"
        run.lease.check(run.saga_id, what)
    function = step.compensation if compensating else step.action
    assert function is not None, "a step without a compensation is not compensated"
    is_async = step.compensation_is_async if compensating else step.is_async
    view = MappingProxyType(dict(run.context))
    # An async step's coroutine: nothing of the step runs before `_attempt` awaits it.
    call = function(view) if is_async else _call_plain(run, name, function, view)
    return await _attempt(run, name, attempt, limit, call, compensating=compensating)


async def _call_plain(
    run: SagaRun, step: str, function: StepFunction, view: Mapping[str, Any]
) -> Any:
    result = await _in_thread(run, step, function, view)
    if inspect.isawaitable(result):  # e.g. a lambda calling an async function
        return await result
    return result


async def _attempt(
    run: SagaRun,
    step: str,
    attempt: int,
    limit: float | None,
    call: Awaitable[T],
    *,
    compensating: bool,
) -> T:
    """Await `call`, one attempt of a step: `current_run()` is its `StepRun`, its span
    (when the run is traced) the current OpenTelemetry span; bounded by `limit` seconds
    (StepTimeoutError; a TimeoutError the step raised itself passes through)."""
    token = set_current_run(run.step_run(step, attempt, compensating=compensating))
    try:
        if not run.traced and limit is None:  # the usual case: nothing to wrap it in
            return await call
        deadline = asyncio.timeout(limit)
        span = (
            step_span(
                run.definition.name,
                run.saga_id,
                step,
                attempt=attempt,
                lease_token=0 if run.fence is None else run.fence.token,
                compensating=compensating,
            )
            if run.traced
            else NO_SPAN
        )
        try:
            with span:  # the attempt's OpenTelemetry span (sagaz.tracing), its error recorded
                async with deadline:
                    return await call
        except TimeoutError as error:
            if not deadline.expired():  # the step raised TimeoutError itself
                raise
            raise StepTimeoutError(
                f"step '{step}' attempt {attempt} timed out after {limit}s"
            ) from error
    finally:
        reset_current_run(token)


async def _in_thread(
    run: SagaRun, step: str, function: StepFunction, view: Mapping[str, Any]
) -> Any:
    call = functools.partial(contextvars.copy_context().run, function, view)
    future = run_in_thread(call)
    try:
        return await asyncio.shield(future)
    except BaseException:
        if not future.done():
            run.stragglers.setdefault(step, []).append(future)
        raise


async def run_in_transaction(
    run: SagaRun, step: StepDefinition, limit: float | None, attempt: int
) -> JSONDict:
    """Run a transactional step through the journal: its writes and its completion
    record commit together (exactly-once local effects). SagaDefinitionError when the
    journal has no database."""
    journal = run.journal
    if not isinstance(journal, TransactionalJournal):
        raise SagaDefinitionError(
            f"step '{step.name}' of saga '{run.definition.name}' takes a session, which "
            "needs a database store: initialize a SagaConfig with database_url or run "
            "it through a worker"
        )

    def completion(result: JSONDict) -> Transition:
        if run.lease is not None:  # called inside the step's transaction: no commit
            run.lease.check(run.saga_id, f"committing step '{step.name}'")
        return run.transition(
            TransitionKind.STEP_COMPLETED, step=step.name, attempt=attempt, result=result
        )

    call = TransactionalStepCall(
        saga_id=run.saga_id,
        function=step.action,
        context=MappingProxyType(dict(run.context)),
        is_async=step.is_async,
        check_result=functools.partial(check_result, step.name),
        completion=completion,
    )
    result = await _attempt(
        run, step.name, attempt, limit, journal.run_step_transaction(call), compensating=False
    )
    if run.listeners:
        await notify_listeners(run.listeners, completion(result), log)
    return result


def check_result(step: str, raw: Any) -> JSONDict:
    """What a step returned, as the JSON object merged into the context: None is {}; a
    value that is not a JSON-serialisable mapping raises InvalidContextError."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidContextError(
            f"step '{step}' returned a {type(raw).__name__}; a step returns None or a mapping"
        )
    return ensure_json_object(raw, f"result of step '{step}'")


async def await_stragglers(run: SagaRun) -> None:
    """Wait for step threads that outlived their timeout or cancellation; a step any of
    whose threads returned successfully has effects, so it will be compensated."""
    for name, futures in run.stragglers.items():
        for future in futures:
            try:
                await asyncio.shield(future)
            except Exception:
                continue
            run.late_successes.add(name)
    run.stragglers.clear()
