"""The state of one run of one saga, and the journal writes that report it.

Every phase of a run (`forward`, `compensation`) works on a `SagaRun`; only `record`
writes, so the lease check before each write (see `sagaz.engine`) is in one place.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz._json import ensure_json_object
from sagaz._util import utcnow
from sagaz.context import current_correlation_id
from sagaz.journal import (
    Fence,
    SagaJournal,
    SagaSnapshot,
    Transition,
    TransitionKind,
    TransitionListener,
    notify_listeners,
)
from sagaz.run_context import LeaseClock, StepRun
from sagaz.tracing import tracing_enabled
from sagaz.types import SagaResult, SagaStatus, StepOutcome, StepStatus

if TYPE_CHECKING:
    from sagaz.definition import SagaDefinition
    from sagaz.policy import RunOptions

log = logging.getLogger("sagaz.engine")

ACTION_SUCCEEDED = frozenset(
    {
        StepStatus.COMPLETED,
        StepStatus.COMPENSATING,
        StepStatus.COMPENSATED,
        StepStatus.COMPENSATION_FAILED,
    }
)
"""Statuses of a step whose action returned successfully (its result is in the context)."""


class SagaRun:
    """The state of one run: the saga's status and context, each step's outcome, the
    errors so far, and the step threads that outlived their attempt."""

    def __init__(
        self,
        journal: SagaJournal,
        options: RunOptions,
        listeners: tuple[TransitionListener, ...],
        definition: SagaDefinition,
        saga_id: str,
        fence: Fence | None,
        snapshot: SagaSnapshot | None,
        context: Mapping[str, Any],
    ) -> None:
        self.journal = journal
        self.options = options
        self.listeners = listeners
        self.definition = definition
        self.saga_id = saga_id
        self.fence = fence
        self.lease: LeaseClock | None = None
        self.give_up: str | None = None
        self.snapshot = snapshot
        self.started_at = utcnow()
        #: Whether its step attempts open OpenTelemetry spans: decided once, at its start.
        self.traced = tracing_enabled()
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
            if stored.status in ACTION_SUCCEEDED and stored.result:
                self.context.update(stored.result)
        if snapshot.error:
            self.first_error = snapshot.error

    def transition(
        self, kind: TransitionKind, at: datetime | None = None, **fields: Any
    ) -> Transition:
        """A transition of this saga, fenced by this run's lease, happening `at` (now)."""
        return Transition(
            kind=kind,
            saga_id=self.saga_id,
            saga_name=self.definition.name,
            at=at or utcnow(),
            fence=self.fence,
            **fields,
        )

    async def record(self, kind: TransitionKind, at: datetime | None = None, **fields: Any) -> None:
        """Write a transition happening `at` (now) to the journal (LeaseLostError, writing
        nothing, once the lease's deadline passed) and then tell the listeners."""
        if self.lease is not None and not self.lease.held():
            self.lease.check(self.saga_id, f"writing {kind.value}")
        transition = self.transition(kind, at, **fields)
        await self.journal.record(transition)
        if self.listeners:
            await notify_listeners(self.listeners, transition, log)

    def fail(self, message: str) -> None:
        self.errors.append(message)
        if self.first_error is None:
            self.first_error = message

    async def fail_step(self, name: str, reason: str) -> None:
        """Record a step that was interrupted (timed out or cancelled) as failed."""
        step = self.outcomes[name]
        step.status = StepStatus.FAILED
        step.error = reason
        step.finished_at = now = utcnow()
        self.errors.append(f"step '{name}': {reason}")
        await self.record(
            TransitionKind.STEP_FAILED, now, step=name, attempt=step.attempts, error=reason
        )

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
