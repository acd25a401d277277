"""The saga state machine: the transitions the engine reports, the state they lead to,
and `apply_transition`, the one function that computes it.

Every journal keeps a saga's state with `apply_transition`: the in-memory journal applies
it to a `SagaSnapshot`, one transition at a time; the SQL writer folds a batch of
transitions with it into a `SagaChange` (the same rules, starting from nothing known about
the stored row) and merges that change into the stored rows in one statement per table.
The merge is "apply the rest of the rules in SQL": for every stored row and every split of
a saga's transitions into batches, the result equals applying the transitions one at a
time (tests/store/test_state_machine_agreement.py checks it on PostgreSQL and SQLite).

Pure: no I/O, no SQLAlchemy, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from sagaz.types import JSONDict, SagaStatus, StepOutcome, StepStatus


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

#: Step statuses that set a step's `finished_at`.
FINISHED_STEP_STATUSES = frozenset(
    {StepStatus.COMPLETED, StepStatus.FAILED, StepStatus.COMPENSATED}
)


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
class SagaSnapshot:
    """A saga as the journal last recorded it: what the engine needs to resume it.

    `updated_at` is the time of the last saga-level transition (or, in a SQL store, of the
    last claim); step transitions leave it alone. `steps` holds a `StepOutcome` per step
    ever started; a journal records a failed compensation's message in its `error`
    (`compensation_error` is reported by a run's result only).
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    steps: dict[str, StepOutcome] = field(default_factory=dict)
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


@dataclass(slots=True)
class SagaChange:
    """What a sequence of transitions does to a saga whose stored state is unknown.

    The SQL writer's unit: `apply_transition` folds a batch into it, then the stored row is
    merged with it. None (False for `release`) keeps the stored value. Each step in `steps`
    is folded from a blank `StepOutcome`, so there: `attempts` is the highest attempt
    started (merged with GREATEST), `started_at` the first start (the stored one wins),
    `result` is set exactly when the step completed (then the folded `error` replaces the
    stored one; otherwise a None `error` keeps it); `status` is always the latest.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus | None = None
    context: JSONDict | None = None
    error: str | None = None
    correlation_id: str | None = None
    release: bool = False
    updated_at: datetime | None = None
    steps: dict[str, StepOutcome] = field(default_factory=dict)


def apply_transition(state: SagaSnapshot | SagaChange, transition: Transition) -> None:
    """Update `state` in place with `transition`: the saga state machine.

    A saga-level transition sets the status, context and error it carries (None leaves
    them), the correlation id on SAGA_STARTED, and releases the lease on SAGA_FINISHED. A
    step-level transition creates the step's record when missing and sets its status;
    STEP_STARTED raises `attempts` to the attempt started and sets `started_at` once;
    STEP_COMPLETED stores the result and clears the error; an error carried replaces the
    step's; a COMPLETED, FAILED or COMPENSATED step gets `finished_at`.
    """
    name = transition.step
    if name is None:
        _apply_to_saga(state, transition)
        return
    step = state.steps.get(name)
    if step is None:
        step = state.steps[name] = StepOutcome(name=name)
    kind = transition.kind
    step_status = transition.step_status
    if step_status is not None:
        step.status = step_status
    if kind is TransitionKind.STEP_STARTED:
        step.attempts = max(step.attempts, transition.attempt)
        step.started_at = step.started_at or transition.at
    elif kind is TransitionKind.STEP_COMPLETED:
        step.result = dict(transition.result or {})
        step.error = None
    if transition.error is not None:
        step.error = transition.error
    if step.status in FINISHED_STEP_STATUSES:
        step.finished_at = transition.at


def _apply_to_saga(state: SagaSnapshot | SagaChange, transition: Transition) -> None:
    state.updated_at = transition.at
    if transition.status is not None:
        state.status = transition.status
    if transition.context is not None:
        state.context = dict(transition.context)
    if transition.error is not None:
        state.error = transition.error
    kind = transition.kind
    if kind is TransitionKind.SAGA_STARTED and transition.correlation_id is not None:
        state.correlation_id = transition.correlation_id
    if kind is TransitionKind.SAGA_FINISHED:  # a finished saga is nobody's
        if isinstance(state, SagaChange):
            state.release = True
        else:
            state.lease_owner = None
            state.lease_expires_at = None
