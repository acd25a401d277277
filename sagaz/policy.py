"""Run options: the step and saga defaults a run falls back on, and each step's resolved
retry and timeout policy.

Its own module so that `sagaz.config` (which builds `RunOptions` from settings) and
`sagaz.engine` (which applies them) both depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from sagaz._util import backoff
from sagaz.types import ParallelFailureStrategy

if TYPE_CHECKING:
    from sagaz.definition import StepDefinition
    from sagaz.journal import TransitionListener

__all__ = ["RunOptions", "RunSettings", "StepPolicy"]


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
        """Seconds before retry number `retry` (1 for the first): `sagaz._util.backoff`
        from `retry_backoff`, at most `max_retry_backoff`."""
        return backoff(retry, self.retry_backoff, self.max_retry_backoff)


class RunSettings(Protocol):
    """What a saga's config gives the engine that runs it (`sagaz.SagaConfig` is one)."""

    @property
    def listeners(self) -> tuple[TransitionListener, ...]: ...

    def run_options(self) -> RunOptions: ...
