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

The run's state and journal writes are in `sagaz.engine.run`, calling step functions in
`sagaz.engine.calls`, the forward phase in `sagaz.engine.forward`, compensation in
`sagaz.engine.compensation`; the run options in `sagaz.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagaz.definition import SagaDefinition
from sagaz.engine.compensation import compensate
from sagaz.engine.forward import forward
from sagaz.engine.run import SagaRun
from sagaz.journal import Fence, SagaJournal, SagaSnapshot, TransitionKind, TransitionListener
from sagaz.policy import RunOptions, RunSettings, StepPolicy
from sagaz.run_context import LeaseClock
from sagaz.types import SagaResult, SagaStatus

__all__ = ["RunOptions", "SagaEngine", "StepPolicy"]


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

    def for_config(self, config: RunSettings | None) -> SagaEngine:
        """This engine for a saga bound to `config` (`Saga(config=...)`, a `SagaConfig`): on
        the same journal, with the config's run options and, after this engine's
        listeners, the config's. Itself for a saga bound to no config."""
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
        run = SagaRun(
            self.journal,
            self.options,
            self.listeners,
            definition,
            saga_id,
            fence,
            snapshot,
            context,
        )
        run.lease = lease
        run.give_up = give_up
        return await _execute(run)


async def _execute(run: SagaRun) -> SagaResult:
    """The whole run: forward, then (when a step failed for good) compensation."""
    if run.status.is_terminal:
        return run.result()
    if run.give_up is not None and run.status is not SagaStatus.COMPENSATING:
        run.errors.append(run.give_up)
        run.first_error = run.give_up
        run.status = SagaStatus.COMPENSATING
        await run.record(TransitionKind.SAGA_COMPENSATING, status=run.status, error=run.give_up)
    if run.status in (SagaStatus.PENDING, SagaStatus.RUNNING):
        if run.status is SagaStatus.PENDING or run.snapshot is None:
            await run.record(
                TransitionKind.SAGA_STARTED,
                status=SagaStatus.RUNNING,
                context=dict(run.context),  # a copy: the run keeps merging into its own
                correlation_id=run.correlation_id,
            )
        run.status = SagaStatus.RUNNING
        if await forward(run):
            run.status = SagaStatus.COMPLETED
            await run.finish()
            return run.result()
        run.status = SagaStatus.COMPENSATING
        await run.record(
            TransitionKind.SAGA_COMPENSATING,
            status=SagaStatus.COMPENSATING,
            error=run.first_error,
        )
    await compensate(run)
    await run.finish()
    return run.result()
