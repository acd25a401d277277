"""The journal: the one interface through which the engine reports every transition.

The engine knows nothing about storage. It calls `SagaJournal.record` for each state
transition and `SagaJournal.load` to resume a run; a store decides how to persist them.
Two properties every implementation must keep:

* **Fencing.** A transition may carry a `Fence` (the owner and token of the lease under
  which it is written). A journal that holds a newer lease for the saga must refuse the
  write with `LeaseLostError`, and the engine then stops the run without touching the saga
  again.
* **Group commit is allowed.** `record` may hold a transition back and write it together
  with transitions of other sagas running concurrently, as long as it returns only once
  the transition is durable.

`apply_transition` is the pure state machine every store shares: given a snapshot and a
transition, it updates the snapshot. The in-memory journal here uses it directly; the SQL
stores turn the same transitions into set-based statements.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from sagaz._util import utcnow as utcnow  # re-exported for sagaz.integrations (issue 12)
from sagaz.errors import LeaseLostError
from sagaz.types import JSONDict, SagaStatus, StepStatus


class TransitionKind(StrEnum):
    """What a `Transition` records: a saga or step starting, an attempt failing, a step
    completing, failing or being compensated, the saga finishing."""

    SAGA_STARTED = "saga_started"
    STEP_STARTED = "step_started"
    STEP_ATTEMPT_FAILED = "step_attempt_failed"
    STEP_COMPLETED = "step_completed"
    STEP_FAILED = "step_failed"
    SAGA_COMPENSATING = "saga_compensating"
    COMPENSATION_STARTED = "compensation_started"
    COMPENSATION_COMPLETED = "compensation_completed"
    COMPENSATION_FAILED = "compensation_failed"
    SAGA_FINISHED = "saga_finished"


#: The step status each step-level transition leaves behind.
STEP_STATUS_AFTER: Mapping[TransitionKind, StepStatus] = {
    TransitionKind.STEP_STARTED: StepStatus.RUNNING,
    TransitionKind.STEP_ATTEMPT_FAILED: StepStatus.RUNNING,
    TransitionKind.STEP_COMPLETED: StepStatus.COMPLETED,
    TransitionKind.STEP_FAILED: StepStatus.FAILED,
    TransitionKind.COMPENSATION_STARTED: StepStatus.COMPENSATING,
    TransitionKind.COMPENSATION_COMPLETED: StepStatus.COMPENSATED,
    TransitionKind.COMPENSATION_FAILED: StepStatus.COMPENSATION_FAILED,
}


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a write is made under: who owns the saga and which lease generation."""

    owner: str
    token: int


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change of a saga or of one of its steps.

    `status` is set on SAGA_STARTED (RUNNING), SAGA_COMPENSATING (COMPENSATING) and
    SAGA_FINISHED (the final status). `context` is the saga context on SAGA_STARTED and
    SAGA_FINISHED. `result` is a step's returned mapping on STEP_COMPLETED.
    """

    kind: TransitionKind
    saga_id: str
    saga_name: str
    at: datetime
    step: str | None = None
    status: SagaStatus | None = None
    attempt: int = 0
    result: JSONDict | None = None
    error: str | None = None
    context: JSONDict | None = None
    correlation_id: str | None = None
    fence: Fence | None = None

    @property
    def step_status(self) -> StepStatus | None:
        return STEP_STATUS_AFTER.get(self.kind)


@dataclass(slots=True)
class StepSnapshot:
    """A step as the journal last recorded it."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    result: JSONDict | None = None
    error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


@dataclass(slots=True)
class SagaSnapshot:
    """A saga as the journal last recorded it: what the engine needs to resume it."""

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    steps: dict[str, StepSnapshot] = field(default_factory=dict)
    error: str | None = None
    correlation_id: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    idempotency_key: str | None = None
    lease_owner: str | None = None
    lease_expires_at: datetime | None = None
    lease_token: int = 0
    attempts: int = 0
    stalled_claims: int = 0


def apply_transition(snapshot: SagaSnapshot, transition: Transition) -> None:
    """Update `snapshot` in place with `transition` (the pure state machine)."""
    snapshot.updated_at = transition.at
    kind = transition.kind
    if transition.step is None:
        if transition.status is not None:
            snapshot.status = transition.status
        if transition.context is not None:
            snapshot.context = dict(transition.context)
        if transition.error is not None:
            snapshot.error = transition.error
        if kind is TransitionKind.SAGA_STARTED and transition.correlation_id is not None:
            snapshot.correlation_id = transition.correlation_id
        if kind is TransitionKind.SAGA_FINISHED:  # a finished saga is nobody's
            snapshot.lease_owner = None
            snapshot.lease_expires_at = None
        return
    step = snapshot.steps.get(transition.step)
    if step is None:
        step = snapshot.steps[transition.step] = StepSnapshot(name=transition.step)
    step_status = transition.step_status
    if step_status is not None:
        step.status = step_status
    if kind is TransitionKind.STEP_STARTED:
        step.attempts = max(step.attempts, transition.attempt)
        step.started_at = step.started_at or transition.at
    if kind is TransitionKind.STEP_COMPLETED:
        step.result = dict(transition.result or {})
        step.error = None
    if transition.error is not None:
        step.error = transition.error
    if step.status in (StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.COMPENSATED):
        step.finished_at = transition.at


WRITE_BEHIND = frozenset({TransitionKind.STEP_STARTED})
"""Transitions a journal may persist after `record` returns (see `SagaJournal.record`)."""


@runtime_checkable
class SagaJournal(Protocol):
    """Where the engine records transitions and reads a saga back to resume it."""

    async def record(self, transition: Transition) -> None:
        """Persist `transition`; return only once it is durable.

        Raises LeaseLostError when the transition's fence is no longer the saga's lease.

        One exception, which a journal may take: a STEP_STARTED transition (see
        `WRITE_BEHIND`) may be written behind, returning before it is durable, provided it
        becomes durable no later than the next transition of the same saga and before a
        transactional step of that saga opens its transaction. A crash can then lose only
        the start record of a step whose outcome was never recorded: the resumed run
        starts that step again either way.
        """

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        """The saga as last recorded, or None when the journal has never seen it."""


@dataclass(frozen=True, slots=True)
class TransactionalStepCall:
    """A step that asked for a database session, handed to the journal to run.

    The journal opens a transaction, calls `function(context, session=...)` (an
    `AsyncSession` for an async step; a sync `Session`, in a worker thread, for a plain
    def), checks the return value with `check_result`, writes `completion(result)`
    through the same transaction and commits: the step's writes, its outbox events and
    its completion record commit together or not at all.
    """

    saga_id: str
    function: Callable[..., Any]
    context: Mapping[str, Any]
    is_async: bool
    check_result: Callable[[Any], JSONDict]
    completion: Callable[[JSONDict], Transition]


@runtime_checkable
class TransactionalJournal(Protocol):
    """A journal that can run a step inside the transaction that records its completion."""

    async def run_step_transaction(self, call: TransactionalStepCall) -> JSONDict:
        """Run the step and commit its completion with its writes; returns its result.

        Raises what the step raised (nothing committed), or LeaseLostError when the
        completion's fence is refused (nothing committed).
        """


TransitionListener = Callable[[Transition], Awaitable[None] | None]
"""Observes transitions after the journal recorded them (metrics, tracing, logging)."""


class MemoryJournal:
    """A journal kept in process memory, with the same fencing rules as the SQL stores.

    Used by `Saga.run` when no store is configured, and by tests. Not durable.
    """

    def __init__(self) -> None:
        self._sagas: dict[str, SagaSnapshot] = {}
        self._leases: dict[str, Fence] = {}
        self._lock = asyncio.Lock()
        self.transitions: list[Transition] = []

    async def record(self, transition: Transition) -> None:
        async with self._lock:
            lease = self._leases.get(transition.saga_id)
            if lease is not None and transition.fence != lease:
                raise LeaseLostError(
                    f"saga {transition.saga_id} is leased to {lease.owner} "
                    f"(token {lease.token}); write by {transition.fence} refused"
                )
            snapshot = self._sagas.get(transition.saga_id)
            if snapshot is None:
                snapshot = self._sagas[transition.saga_id] = SagaSnapshot(
                    saga_id=transition.saga_id,
                    saga_name=transition.saga_name,
                    status=SagaStatus.PENDING,
                    context={},
                    created_at=transition.at,
                )
            apply_transition(snapshot, transition)
            self.transitions.append(transition)

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        snapshot = self._sagas.get(saga_id)
        if snapshot is None:
            return None
        return replace(
            snapshot,
            context=dict(snapshot.context),
            steps={name: replace(step) for name, step in snapshot.steps.items()},
        )

    def lease(self, saga_id: str, owner: str) -> Fence:
        """Take the saga's lease for `owner`, fencing out every earlier holder."""
        previous = self._leases.get(saga_id)
        fence = Fence(owner=owner, token=(previous.token + 1) if previous else 1)
        self._leases[saga_id] = fence
        return fence

    def kinds(self, saga_id: str) -> list[tuple[TransitionKind, str | None]]:
        """The (kind, step) sequence recorded for one saga, for tests and debugging."""
        return [(t.kind, t.step) for t in self.transitions if t.saga_id == saga_id]


async def notify_listeners(
    listeners: tuple[TransitionListener, ...], transition: Transition, log: Any
) -> None:
    """Call every listener; a failing listener is logged and never breaks the saga."""
    for listener in listeners:
        try:
            outcome = listener(transition)
            if outcome is not None:
                await outcome
        except Exception:
            log.warning("sagaz listener %r failed on %s", listener, transition.kind, exc_info=True)
