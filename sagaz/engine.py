"""Runs one saga: schedules steps along the graph, retries, timeouts, failure strategies
and compensation, and reports every transition to a journal.

The engine knows nothing of SQL. Durability, fencing and batching belong to the journal
(see `sagaz.journal`); the engine's promises are about order:

* a step starts only after every step it depends on completed;
* a step is compensated only after every completed step that depends on it has been
  compensated (reverse topological order), and only if its action returned successfully;
* a failed compensation is retried; if it still fails, the steps it depends on are left
  uncompensated and the saga ends FAILED with every error recorded;
* when a fenced write is refused (`LeaseLostError`), the run stops at once, cancelling its
  steps, and writes nothing more;
* under a worker's lease (`lease`, a `LeaseClock`), once the lease's deadline passed by
  this process's monotonic clock the run starts no step, no compensation and no journal
  write (LeaseLostError, raised before asking the database). Steps see their run through
  `sagaz.current_run()`.

Plain `def` steps run in the event loop's default thread pool. A thread cannot be
interrupted: when such a step times out or is cancelled (FAIL_FAST, saga timeout), the
saga treats it as failed at once, but compensation starts only after the thread has
returned, and a thread that then returned successfully has its step compensated as well.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from sagaz._json import ensure_json_object
from sagaz.context import current_correlation_id
from sagaz.definition import SagaDefinition, StepDefinition, StepFunction, is_async_callable
from sagaz.errors import (
    DatabaseUnavailableError,
    InvalidContextError,
    LeaseLostError,
    SagaDefinitionError,
    SagaTimeoutError,
    StepTimeoutError,
)
from sagaz.journal import (
    Fence,
    SagaJournal,
    SagaSnapshot,
    TransactionalJournal,
    TransactionalStepCall,
    Transition,
    TransitionKind,
    TransitionListener,
    notify_listeners,
    utcnow,
)
from sagaz.run_context import LeaseClock, StepRun, reset_current_run, set_current_run
from sagaz.types import (
    JSONDict,
    ParallelFailureStrategy,
    SagaResult,
    SagaStatus,
    StepOutcome,
    StepStatus,
)

if TYPE_CHECKING:
    from sagaz.config import SagaConfig

log = logging.getLogger("sagaz.engine")


@dataclass(frozen=True, slots=True)
class RunOptions:
    """Defaults a step or saga falls back on when its definition leaves an option unset."""

    failure_strategy: ParallelFailureStrategy = ParallelFailureStrategy.FAIL_FAST
    saga_timeout_seconds: float | None = None
    max_retries: int = 0
    retry_backoff: float = 0.5
    max_retry_backoff: float = 30.0
    step_timeout_seconds: float | None = None
    compensation_retries: int = 3

    def for_step(self, step: StepDefinition) -> StepPolicy:
        """The step's own options, with this run's defaults where it left them unset."""
        return StepPolicy(
            max_retries=self.max_retries if step.max_retries is None else step.max_retries,
            retry_backoff=self.retry_backoff if step.retry_backoff is None else step.retry_backoff,
            max_retry_backoff=self.max_retry_backoff,
            timeout_seconds=step.timeout_seconds or self.step_timeout_seconds,
            compensation_retries=(
                self.compensation_retries
                if step.compensation_retries is None
                else step.compensation_retries
            ),
        )


@dataclass(frozen=True, slots=True)
class StepPolicy:
    """The resolved retry and timeout policy of one step."""

    max_retries: int
    retry_backoff: float
    max_retry_backoff: float
    timeout_seconds: float | None
    compensation_retries: int

    def delay(self, retry: int) -> float:
        return backoff_delay(self.retry_backoff, retry, self.max_retry_backoff)


def backoff_delay(base: float, retry: int, cap: float) -> float:
    """Exponential backoff with jitter: base * 2**(retry-1), scaled by a factor in
    [0.5, 1.5), never more than `cap` seconds."""
    delay: float = base * (2 ** (retry - 1)) * (0.5 + random.random())
    return min(cap, delay)


class _StepFailed(Exception):
    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(step, error)
        self.step = step
        self.error = error


async def _abandon(running: dict[asyncio.Task[JSONDict], str]) -> None:
    """Cancel running steps and wait for them, recording nothing (the run is aborting)."""
    for task in running:
        task.cancel()
    await asyncio.gather(*running, return_exceptions=True)


def _describe(error: BaseException) -> str:
    """`Type: message` of an error, as stored on the saga (a NUL character, which
    PostgreSQL's text columns refuse, is written as `\\x00`; a lone surrogate escaped too)."""
    text = str(error).replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


class SagaEngine:
    """Executes saga definitions against one journal with one set of defaults."""

    def __init__(
        self,
        journal: SagaJournal,
        options: RunOptions | None = None,
        listeners: tuple[TransitionListener, ...] = (),
    ) -> None:
        self.journal = journal
        self.options = options or RunOptions()
        self.listeners = listeners

    def for_config(self, config: SagaConfig | None) -> SagaEngine:
        """This engine for a saga bound to `config` (`Saga(config=...)`): on the same
        journal, with the config's run options and, after this engine's listeners, the
        config's. Itself for a saga bound to no config."""
        if config is None:
            return self
        return SagaEngine(self.journal, config.run_options(), (*self.listeners, *config.listeners))

    async def run(
        self,
        definition: SagaDefinition,
        context: Mapping[str, Any],
        *,
        saga_id: str,
        fence: Fence | None = None,
        resume: bool = True,
        snapshot: SagaSnapshot | None = None,
        lease: LeaseClock | None = None,
        give_up: str | None = None,
    ) -> SagaResult:
        """Run (or, when the journal knows `saga_id` and `resume` is true, resume) a saga.

        Returns the result for COMPLETED, COMPENSATED and FAILED sagas alike. Raises
        InvalidContextError before any transition for a non-JSON context, and
        LeaseLostError when the journal refuses a fenced write. A worker that already read
        the saga passes it as `snapshot` to save the journal a read.

        `lease` is the worker's lease deadline (see the module docstring). `give_up`, a
        reason, runs no further step: a saga still going forward is compensated at once,
        with `give_up` as its error.
        """
        if snapshot is None and resume:
            snapshot = await self.journal.load(saga_id)
        run = _SagaRun(self, definition, saga_id, fence, snapshot, context)
        run.lease = lease
        run.give_up = give_up
        return await run.execute()


class _SagaRun:
    """The state of one run of one saga."""

    def __init__(
        self,
        engine: SagaEngine,
        definition: SagaDefinition,
        saga_id: str,
        fence: Fence | None,
        snapshot: SagaSnapshot | None,
        context: Mapping[str, Any],
    ) -> None:
        self.engine = engine
        self.options = engine.options
        self.definition = definition
        self.saga_id = saga_id
        self.fence = fence
        self.lease: LeaseClock | None = None
        self.give_up: str | None = None
        self.snapshot = snapshot
        self.started_at = utcnow()
        self.outcomes = {step.name: StepOutcome(name=step.name) for step in definition.steps}
        self.positions = {step.name: index for index, step in enumerate(definition.steps)}
        self.errors: list[str] = []
        self.first_error: str | None = None
        # Threads of timed-out or cancelled attempts, per step (each retry may leave one).
        self.stragglers: dict[str, list[asyncio.Future[Any]]] = {}
        self.late_successes: set[str] = set()
        if snapshot is None:
            self.context = ensure_json_object(context, "context")
            self.status = SagaStatus.PENDING
            self.correlation_id = current_correlation_id()
        else:
            self.status = snapshot.status
            self.correlation_id = snapshot.correlation_id
            self.context = dict(snapshot.context)
            self._load_steps(snapshot)

    def _load_steps(self, snapshot: SagaSnapshot) -> None:
        for step in self.definition.steps:  # topological order: deterministic merges
            stored = snapshot.steps.get(step.name)
            if stored is None:
                continue
            outcome = self.outcomes[step.name]
            outcome.status = stored.status
            outcome.attempts = stored.attempts
            outcome.result = stored.result
            outcome.error = stored.error
            outcome.started_at = stored.started_at
            outcome.finished_at = stored.finished_at
            if stored.status in _ACTION_SUCCEEDED and stored.result:
                self.context.update(stored.result)
        if snapshot.error:
            self.first_error = snapshot.error

    async def record(self, kind: TransitionKind, **fields: Any) -> None:
        if self.lease is not None:
            self.lease.check(self.saga_id, f"writing {kind.value}")
        transition = Transition(
            kind=kind,
            saga_id=self.saga_id,
            saga_name=self.definition.name,
            at=utcnow(),
            fence=self.fence,
            **fields,
        )
        await self.engine.journal.record(transition)
        if self.engine.listeners:
            await notify_listeners(self.engine.listeners, transition, log)

    def fail(self, message: str) -> None:
        self.errors.append(message)
        if self.first_error is None:
            self.first_error = message

    # -- the whole run -------------------------------------------------------------

    async def execute(self) -> SagaResult:
        if self.status.is_terminal:
            return self.result()
        if self.give_up is not None and self.status is not SagaStatus.COMPENSATING:
            self.errors.append(self.give_up)
            self.first_error = self.give_up
            self.status = SagaStatus.COMPENSATING
            await self.record(
                TransitionKind.SAGA_COMPENSATING, status=self.status, error=self.give_up
            )
        if self.status in (SagaStatus.PENDING, SagaStatus.RUNNING):
            if self.status is SagaStatus.PENDING or self.snapshot is None:
                await self.record(
                    TransitionKind.SAGA_STARTED,
                    status=SagaStatus.RUNNING,
                    context=dict(self.context),  # a copy: the run keeps merging into its own
                    correlation_id=self.correlation_id,
                )
            self.status = SagaStatus.RUNNING
            if await self.forward():
                self.status = SagaStatus.COMPLETED
                await self.finish()
                return self.result()
            self.status = SagaStatus.COMPENSATING
            await self.record(
                TransitionKind.SAGA_COMPENSATING,
                status=SagaStatus.COMPENSATING,
                error=self.first_error,
            )
        await self.compensate()
        await self.finish()
        return self.result()

    async def finish(self) -> None:
        await self.record(
            TransitionKind.SAGA_FINISHED,
            status=self.status,
            context=dict(self.context),  # a copy: the run keeps merging into its own
            error=self.first_error if self.status is not SagaStatus.COMPLETED else None,
        )

    def result(self) -> SagaResult:
        return SagaResult(
            saga_id=self.saga_id,
            saga_name=self.definition.name,
            status=self.status,
            context=dict(self.context),
            steps=self.outcomes,
            started_at=self.started_at,
            finished_at=utcnow(),
            error=self.first_error,
            errors=list(self.errors),
            correlation_id=self.correlation_id,
        )

    # -- forward phase -------------------------------------------------------------

    async def forward(self) -> bool:
        """Run the steps; True when every step completed."""
        timeout = self.definition.timeout_seconds or self.options.saga_timeout_seconds
        running: dict[asyncio.Task[JSONDict], str] = {}
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await self._schedule(running)
        except TimeoutError:
            if not deadline.expired():  # e.g. a journal write timed out: not ours to handle
                await _abandon(running)
                raise
            message = _describe(
                SagaTimeoutError(f"saga '{self.definition.name}' timed out after {timeout}s")
            )
            self.fail(message)
            await self._cancel(running, message)
            await self._fail_interrupted(message)
        except BaseException:
            await _abandon(running)
            raise
        return all(o.status is StepStatus.COMPLETED for o in self.outcomes.values())

    async def _schedule(self, running: dict[asyncio.Task[JSONDict], str]) -> None:
        strategy = self.definition.failure_strategy or self.options.failure_strategy
        started = {n for n, o in self.outcomes.items() if o.status is StepStatus.COMPLETED}
        stop_starting = False
        while True:
            ready = [] if stop_starting else self._ready(started)
            if len(ready) == 1 and not running:
                # The common case of a chain: one step and nothing else in flight. Await it
                # here rather than as a task (no task, no wait round); failure handling is
                # the same, and a saga timeout that interrupts it is recorded by forward().
                (step,) = ready
                started.add(step.name)
                try:
                    self.context.update(await self._run_step(step))
                except _StepFailed:
                    if strategy is not ParallelFailureStrategy.WAIT_ALL:
                        stop_starting = True
                continue
            for step in ready:
                started.add(step.name)
                task = asyncio.create_task(self._run_step(step), name=f"sagaz:{step.name}")
                running[task] = step.name
            if not running:
                return
            done, _pending = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            # Several steps can finish in one wake-up: take them all out of `running` (in
            # definition order, so merges are deterministic) before cancelling the rest.
            finished = sorted(
                ((running.pop(task), task) for task in done),
                key=lambda item: self.positions[item[0]],
            )
            failed: str | None = None
            for name, task in finished:
                error = task.exception()
                if error is None:
                    self.context.update(task.result())
                elif isinstance(error, LeaseLostError) or not isinstance(error, _StepFailed):
                    raise error
                elif failed is None:
                    failed = name
            if failed is None:
                continue
            if strategy is ParallelFailureStrategy.FAIL_FAST:
                stop_starting = True
                await self._cancel(running, f"cancelled: step '{failed}' failed (fail fast)")
            elif strategy is ParallelFailureStrategy.FAIL_FAST_WITH_GRACE:
                stop_starting = True

    async def _fail_interrupted(self, reason: str) -> None:
        """Record as failed a step the saga timeout interrupted while it ran inline."""
        for name, step in self.outcomes.items():
            if step.status is StepStatus.RUNNING:
                step.status = StepStatus.FAILED
                step.error = reason
                step.finished_at = utcnow()
                self.errors.append(f"step '{name}': {reason}")
                await self.record(
                    TransitionKind.STEP_FAILED, step=name, attempt=step.attempts, error=reason
                )

    def _ready(self, started: set[str]) -> list[StepDefinition]:
        completed = {n for n, o in self.outcomes.items() if o.status is StepStatus.COMPLETED}
        return [
            step
            for step in self.definition.steps
            if step.name not in started and all(dep in completed for dep in step.depends_on)
        ]

    async def _cancel(self, running: dict[asyncio.Task[JSONDict], str], reason: str) -> None:
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
                step = self.outcomes[name]
                step.status = StepStatus.FAILED
                step.error = reason
                step.finished_at = utcnow()
                self.errors.append(f"step '{name}': {reason}")
                await self.record(
                    TransitionKind.STEP_FAILED, step=name, attempt=step.attempts, error=reason
                )
                continue
            error = task.exception()
            if error is None:
                self.context.update(task.result())
            elif not isinstance(error, _StepFailed):  # LeaseLostError, a journal error
                raise error

    async def _run_step(self, step: StepDefinition) -> JSONDict:
        outcome = self.outcomes[step.name]
        policy = self.options.for_step(step)
        retries = policy.max_retries
        first_attempt = outcome.attempts + 1
        for attempt in range(first_attempt, first_attempt + retries + 1):
            outcome.status = StepStatus.RUNNING
            outcome.attempts = attempt
            outcome.started_at = outcome.started_at or utcnow()
            await self.record(TransitionKind.STEP_STARTED, step=step.name, attempt=attempt)
            try:
                if step.wants_session:
                    result = await self._run_in_transaction(step, policy.timeout_seconds, attempt)
                    outcome.status = StepStatus.COMPLETED
                    outcome.result = result
                    outcome.error = None
                    outcome.finished_at = utcnow()
                    return result
                raw = await self._invoke(step.name, step.action, policy.timeout_seconds, attempt)
                result = self._check_result(step.name, raw)
            except (
                asyncio.CancelledError,
                LeaseLostError,
                SagaDefinitionError,
                DatabaseUnavailableError,
            ):
                raise  # not a step failure: the run stops (a programming error raises)
            except Exception as error:
                message = _describe(error)
                is_last = attempt >= first_attempt + retries or isinstance(
                    error, InvalidContextError
                )
                if not is_last:
                    await self.record(
                        TransitionKind.STEP_ATTEMPT_FAILED,
                        step=step.name,
                        attempt=attempt,
                        error=message,
                    )
                    await asyncio.sleep(policy.delay(attempt))
                    continue
                outcome.status = StepStatus.FAILED
                outcome.error = message
                outcome.finished_at = utcnow()
                self.fail(f"step '{step.name}': {message}")
                await self.record(
                    TransitionKind.STEP_FAILED, step=step.name, attempt=attempt, error=message
                )
                raise _StepFailed(step.name, error) from error
            outcome.status = StepStatus.COMPLETED
            outcome.result = result
            outcome.error = None
            outcome.finished_at = utcnow()
            await self.record(
                TransitionKind.STEP_COMPLETED, step=step.name, attempt=attempt, result=result
            )
            return result
        raise AssertionError("unreachable: the attempt loop always returns or raises")

    async def _run_in_transaction(
        self, step: StepDefinition, limit: float | None, attempt: int
    ) -> JSONDict:
        """Run a transactional step through the journal: its writes and its completion
        record commit together (exactly-once local effects)."""
        journal = self.engine.journal
        if not isinstance(journal, TransactionalJournal):
            raise SagaDefinitionError(
                f"step '{step.name}' of saga '{self.definition.name}' takes a session, which "
                "needs a database store: initialize a SagaConfig with database_url or run "
                "it through a worker"
            )

        def completion(result: JSONDict) -> Transition:
            if self.lease is not None:  # called inside the step's transaction: no commit
                self.lease.check(self.saga_id, f"committing step '{step.name}'")
            return Transition(
                kind=TransitionKind.STEP_COMPLETED,
                saga_id=self.saga_id,
                saga_name=self.definition.name,
                at=utcnow(),
                fence=self.fence,
                step=step.name,
                attempt=attempt,
                result=result,
            )

        call = TransactionalStepCall(
            saga_id=self.saga_id,
            function=step.action,
            context=MappingProxyType(dict(self.context)),
            is_async=step.is_async,
            check_result=functools.partial(self._check_result, step.name),
            completion=completion,
        )
        deadline = asyncio.timeout(limit)
        token = set_current_run(self.step_run(step.name, attempt, compensating=False))
        try:
            async with deadline:
                result = await journal.run_step_transaction(call)
        except TimeoutError as error:
            if not deadline.expired():  # the step raised TimeoutError itself
                raise
            raise StepTimeoutError(
                f"step '{step.name}' attempt {attempt} timed out after {limit}s"
            ) from error
        finally:
            reset_current_run(token)
        if self.engine.listeners:
            await notify_listeners(self.engine.listeners, completion(result), log)
        return result

    def _check_result(self, step: str, raw: Any) -> JSONDict:
        if raw is None:
            return {}
        if not isinstance(raw, Mapping):
            raise InvalidContextError(
                f"step '{step}' returned a {type(raw).__name__}; a step returns None or a mapping"
            )
        return ensure_json_object(raw, f"result of step '{step}'")

    def step_run(self, step: str, attempt: int, *, compensating: bool) -> StepRun:
        """What `sagaz.current_run()` returns inside this step attempt."""
        return StepRun(
            saga_id=self.saga_id,
            saga_name=self.definition.name,
            step=step,
            attempt=attempt,
            fence=0 if self.fence is None else self.fence.token,
            compensating=compensating,
            lease=self.lease,
        )

    async def _invoke(
        self,
        step: str,
        function: StepFunction,
        limit: float | None,
        attempt: int,
        *,
        compensating: bool = False,
    ) -> Any:
        """Call a step function with a read-only copy of the context, bounded by `limit`,
        as `current_run()`; not at all once the lease deadline passed."""
        if self.lease is not None:
            what = f"compensation of step '{step}'" if compensating else f"step '{step}'"
            self.lease.check(self.saga_id, what)
        view = MappingProxyType(dict(self.context))
        deadline = asyncio.timeout(limit)
        token = set_current_run(self.step_run(step, attempt, compensating=compensating))
        try:
            async with deadline:
                if is_async_callable(function):
                    return await function(view)
                result = await self._in_thread(step, function, view)
                if inspect.isawaitable(result):  # e.g. a lambda calling an async function
                    return await result
                return result
        except TimeoutError as error:
            if not deadline.expired():  # the step raised TimeoutError itself
                raise
            raise StepTimeoutError(
                f"step '{step}' attempt {attempt} timed out after {limit}s"
            ) from error
        finally:
            reset_current_run(token)

    async def _in_thread(self, step: str, function: StepFunction, view: Mapping[str, Any]) -> Any:
        loop = asyncio.get_running_loop()
        call = functools.partial(contextvars.copy_context().run, function, view)
        future = loop.run_in_executor(None, call)
        try:
            return await asyncio.shield(future)
        except BaseException:
            if not future.done():
                self.stragglers.setdefault(step, []).append(future)
            raise

    # -- compensation --------------------------------------------------------------

    async def compensate(self) -> None:
        """Undo every step whose action succeeded, dependents first."""
        await self._await_stragglers()
        pending = {
            name
            for name, outcome in self.outcomes.items()
            if outcome.status in _NEEDS_COMPENSATION or name in self.late_successes
        }
        descendants = {name: self.definition.descendants(name) for name in pending}
        blocked: set[str] = set()
        while pending:
            for name in sorted(n for n in pending if descendants[n] & blocked):
                pending.discard(name)
                blocked.add(name)
                message = "not compensated: a step that depends on it could not be compensated"
                self.outcomes[name].compensation_error = message
                self.errors.append(f"step '{name}': {message}")
            # In a DAG some pending step always has no pending descendant.
            ready = sorted(n for n in pending if not descendants[n] & pending)
            results = await asyncio.gather(*(self._compensate_step(n) for n in ready))
            for name, ok in zip(ready, results, strict=True):
                pending.discard(name)
                if not ok:
                    blocked.add(name)
        if blocked:
            self.status = SagaStatus.FAILED
        else:
            self.status = SagaStatus.COMPENSATED

    async def _await_stragglers(self) -> None:
        """Wait for step threads that outlived their timeout or cancellation; a step any of
        whose threads returned successfully has effects, so it will be compensated."""
        for name, futures in self.stragglers.items():
            for future in futures:
                try:
                    await asyncio.shield(future)
                except Exception:
                    continue
                self.late_successes.add(name)
        self.stragglers.clear()

    async def _compensate_step(self, name: str) -> bool:
        step = self.definition.step(name)
        outcome = self.outcomes[name]
        if step.compensation is None:
            outcome.status = StepStatus.COMPENSATED
            await self.record(TransitionKind.COMPENSATION_COMPLETED, step=name)
            return True
        policy = self.options.for_step(step)
        retries = policy.compensation_retries
        outcome.status = StepStatus.COMPENSATING
        await self.record(TransitionKind.COMPENSATION_STARTED, step=name)
        for attempt in range(1, retries + 2):
            try:
                await self._invoke(
                    name, step.compensation, policy.timeout_seconds, attempt, compensating=True
                )
            except (asyncio.CancelledError, LeaseLostError):
                raise
            except Exception as error:
                message = _describe(error)
                if attempt <= retries:
                    log.warning(
                        "compensation of step %r failed (attempt %d): %s", name, attempt, message
                    )
                    await asyncio.sleep(policy.delay(attempt))
                    continue
                outcome.status = StepStatus.COMPENSATION_FAILED
                outcome.compensation_error = message
                self.errors.append(f"compensation of step '{name}': {message}")
                await self.record(TransitionKind.COMPENSATION_FAILED, step=name, error=message)
                return False
            outcome.status = StepStatus.COMPENSATED
            await self.record(TransitionKind.COMPENSATION_COMPLETED, step=name)
            return True
        raise AssertionError("unreachable: the attempt loop always returns")


_ACTION_SUCCEEDED = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)
# COMPENSATION_FAILED is only seen when resuming a run that stopped before finishing: the
# compensation is tried again rather than skipped (skipping it would let the steps it
# depends on be compensated first).
_NEEDS_COMPENSATION = frozenset(
    {StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED}
)
