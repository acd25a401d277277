"""The forward phase of a run: steps scheduled along the graph (a step starts once every
step it depends on completed), each step's attempts and retries, the failure strategy
and the saga timeout."""

from __future__ import annotations

import asyncio
import contextlib

from sagaz._util import describe, utcnow
from sagaz.definition import StepDefinition
from sagaz.engine.calls import check_result, invoke, run_in_transaction
from sagaz.engine.run import SagaRun
from sagaz.errors import (
    DatabaseUnavailableError,
    InvalidContextError,
    LeaseLostError,
    SagaDefinitionError,
    SagaTimeoutError,
)
from sagaz.journal import TransitionKind
from sagaz.types import JSONDict, ParallelFailureStrategy, StepStatus

Running = dict[asyncio.Task[JSONDict], str]
"""The steps running as tasks, by task: the step's name."""


class StepFailed(Exception):
    """A step failed for good (its last attempt failed); already recorded."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error


async def forward(run: SagaRun) -> bool:
    """Run the steps; True when every step completed."""
    timeout = run.definition.timeout_seconds or run.options.saga_timeout_seconds
    running: Running = {}
    deadline = None if timeout is None else asyncio.timeout(timeout)
    try:
        # the usual case has no deadline: nothing to arm (asyncio.timeout(None) still costs)
        async with deadline or contextlib.nullcontext():
            await _schedule(run, running)
    except TimeoutError:
        if deadline is None or not deadline.expired():  # e.g. a journal write timed out
            await _abandon(running)
            raise
        message = describe(
            SagaTimeoutError(f"saga '{run.definition.name}' timed out after {timeout}s")
        )
        run.fail(message)
        await _cancel(run, running, message)
        for name, outcome in run.outcomes.items():  # a step interrupted while run inline
            if outcome.status is StepStatus.RUNNING:
                await run.fail_step(name, message)
    except BaseException:
        await _abandon(running)
        raise
    return all(o.status is StepStatus.COMPLETED for o in run.outcomes.values())


async def _schedule(run: SagaRun, running: Running) -> None:
    strategy = run.definition.failure_strategy or run.options.failure_strategy
    started = {n for n, o in run.outcomes.items() if o.status is StepStatus.COMPLETED}
    stop_starting = False
    while True:
        ready = [] if stop_starting else _ready(run, started)
        if len(ready) == 1 and not running:
            # The common case of a chain: one step and nothing else in flight. Await it
            # here rather than as a task (no task, no wait round); failure handling is
            # the same, and a saga timeout that interrupts it is recorded by forward().
            (step,) = ready
            started.add(step.name)
            try:
                run.context.update(await run_step(run, step))
            except StepFailed:
                if strategy is not ParallelFailureStrategy.WAIT_ALL:
                    stop_starting = True
            continue
        for step in ready:
            started.add(step.name)
            task = asyncio.create_task(run_step(run, step), name=f"sagaz:{step.name}")
            running[task] = step.name
        if not running:
            return
        done, _pending = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
        # Several steps can finish in one wake-up: take them all out of `running` (in
        # definition order, so merges are deterministic) before cancelling the rest.
        finished = sorted(
            ((running.pop(task), task) for task in done),
            key=lambda item: run.positions[item[0]],
        )
        failed: str | None = None
        for name, task in finished:
            error = task.exception()
            if error is None:
                run.context.update(task.result())
            elif isinstance(error, LeaseLostError) or not isinstance(error, StepFailed):
                raise error
            elif failed is None:
                failed = name
        if failed is None:
            continue
        if strategy is ParallelFailureStrategy.FAIL_FAST:
            stop_starting = True
            await _cancel(run, running, f"cancelled: step '{failed}' failed (fail fast)")
        elif strategy is ParallelFailureStrategy.FAIL_FAST_WITH_GRACE:
            stop_starting = True


def _ready(run: SagaRun, started: set[str]) -> list[StepDefinition]:
    outcomes = run.outcomes
    return [
        step
        for step in run.definition.steps
        if step.name not in started
        and all(outcomes[dep].status is StepStatus.COMPLETED for dep in step.depends_on)
    ]


async def _abandon(running: Running) -> None:
    """Cancel running steps and wait for them, recording nothing (the run is aborting)."""
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


async def _cancel(run: SagaRun, running: Running, reason: str) -> None:
    """Cancel running steps, wait until they have stopped, and record each cancelled
    one as failed with `reason`.

    A step leaves `running` only once it is handled, so when this wait is itself
    interrupted (the saga timeout expiring during a fail-fast cancellation) the caller
    calls again and no step is left unrecorded, or still running under compensation.
    """
    for task in running:
        if not task.cancelling():  # a second cancel would cut the step's own cleanup
            task.cancel()
    if running:
        await asyncio.wait(set(running))
    for task, name in list(running.items()):
        del running[task]
        if task.cancelled():
            await run.fail_step(name, reason)
            continue
        error = task.exception()
        if error is None:
            run.context.update(task.result())
        elif not isinstance(error, StepFailed):  # LeaseLostError, a journal error
            raise error


async def run_step(run: SagaRun, step: StepDefinition) -> JSONDict:
    """Run a step's attempts until one succeeds (its result, merged by the caller) or
    its retries are used up (StepFailed, the failure recorded)."""
    outcome = run.outcomes[step.name]
    policy = run.options.for_step(step)
    retries = policy.max_retries
    first_attempt = outcome.attempts + 1
    for attempt in range(first_attempt, first_attempt + retries + 1):
        now = utcnow()
        outcome.status = StepStatus.RUNNING
        outcome.attempts = attempt
        outcome.started_at = outcome.started_at or now
        await run.record(TransitionKind.STEP_STARTED, now, step=step.name, attempt=attempt)
        try:
            if step.wants_session:
                result = await run_in_transaction(run, step, policy.timeout_seconds, attempt)
                outcome.status = StepStatus.COMPLETED
                outcome.result = result
                outcome.error = None
                outcome.finished_at = utcnow()
                return result
            raw = await invoke(run, step, policy.timeout_seconds, attempt)
            result = check_result(step.name, raw)
        except (
            asyncio.CancelledError,
            LeaseLostError,
            SagaDefinitionError,
            DatabaseUnavailableError,
        ):
            raise  # not a step failure: the run stops (a programming error raises)
        except Exception as error:
            message = describe(error)
            is_last = attempt >= first_attempt + retries or isinstance(error, InvalidContextError)
            if not is_last:
                await run.record(
                    TransitionKind.STEP_ATTEMPT_FAILED,
                    step=step.name,
                    attempt=attempt,
                    error=message,
                )
                await asyncio.sleep(policy.delay(attempt))
                continue
            now = utcnow()
            outcome.status = StepStatus.FAILED
            outcome.error = message
            outcome.finished_at = now
            run.fail(f"step '{step.name}': {message}")
            await run.record(
                TransitionKind.STEP_FAILED, now, step=step.name, attempt=attempt, error=message
            )
            raise StepFailed(step.name, error) from error
        now = utcnow()
        outcome.status = StepStatus.COMPLETED
        outcome.result = result
        outcome.error = None
        outcome.finished_at = now
        await run.record(
            TransitionKind.STEP_COMPLETED, now, step=step.name, attempt=attempt, result=result
        )
        return result
    raise AssertionError("unreachable: the attempt loop always returns or raises")
