"""Value types shared by the engine, the stores and the adapters.

Everything here is plain data: no I/O, no SQLAlchemy, safe to import anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

JSONDict = dict[str, Any]


class SagaStatus(StrEnum):
    """Lifecycle of one saga instance.

    PENDING -> RUNNING -> COMPLETED, or RUNNING -> COMPENSATING -> COMPENSATED | FAILED.
    FAILED means a compensation could not be completed (or the saga could not be run at
    all) and a human has to look at it.
    """

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_SAGA_STATUSES


_TERMINAL_SAGA_STATUSES = frozenset(
    {SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED}
)


class StepStatus(StrEnum):
    """Lifecycle of one step within a saga instance."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class ParallelFailureStrategy(StrEnum):
    """What happens to the other steps when one step fails.

    FAIL_FAST: running steps are cancelled at once and nothing new starts.
    FAIL_FAST_WITH_GRACE: running steps finish (with their retries), nothing new starts.
    WAIT_ALL: running steps finish and every step that does not depend on a failed one
    still runs; compensation starts when nothing more can run.
    """

    FAIL_FAST = "fail_fast"
    FAIL_FAST_WITH_GRACE = "fail_fast_with_grace"
    WAIT_ALL = "wait_all"


@dataclass(slots=True)
class StepOutcome:
    """One step's record: what happened to it during a run (or, after a resume, across
    runs), and what a journal stores and loads for it (`SagaSnapshot.steps`).

    A run's result reports a failed compensation in `compensation_error`, keeping the
    action's error in `error`; a journal has one error per step and records the
    compensation's there (see `sagaz.state.apply_transition`).
    """

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    result: JSONDict | None = None
    error: str | None = None
    compensation_error: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


@dataclass(slots=True)
class SagaResult:
    """The outcome of `Saga.run` (and of a worker's run).

    `status` is COMPLETED, COMPENSATED or FAILED. `error` is the first failure that sent
    the saga into compensation; `errors` lists every failure, compensation failures
    included, in the order they happened.
    """

    saga_id: str
    saga_name: str
    status: SagaStatus
    context: JSONDict
    steps: dict[str, StepOutcome]
    started_at: datetime
    finished_at: datetime
    error: str | None = None
    errors: list[str] = field(default_factory=list)
    correlation_id: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status is SagaStatus.COMPLETED

    @property
    def duration_seconds(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def step(self, name: str) -> StepOutcome:
        return self.steps[name]
