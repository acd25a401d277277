"""The compensation phase of a run: every step whose action succeeded is undone, the
steps that depend on it first (reverse topological order), each compensation retried; a
compensation that still fails leaves the steps it depends on uncompensated."""

from __future__ import annotations

import asyncio
import logging

from sagaz._util import describe
from sagaz.engine.calls import await_stragglers, invoke
from sagaz.engine.run import SagaRun
from sagaz.errors import LeaseLostError
from sagaz.journal import TransitionKind
from sagaz.logging import fields
from sagaz.types import SagaStatus, StepStatus

log = logging.getLogger("sagaz.engine")

# COMPENSATION_FAILED is only seen when resuming a run that stopped before finishing: the
# compensation is tried again rather than skipped (skipping it would let the steps it
# depends on be compensated first).
NEEDS_COMPENSATION = frozenset(
    {StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED}
)


async def compensate(run: SagaRun) -> None:
    """Undo every step whose action succeeded, dependents first; the run ends
    COMPENSATED, or FAILED when a compensation could not be completed."""
    await await_stragglers(run)
    pending = {
        name
        for name, outcome in run.outcomes.items()
        if outcome.status in NEEDS_COMPENSATION or name in run.late_successes
    }
    descendants = {name: run.definition.descendants(name) for name in pending}
    blocked: set[str] = set()
    while pending:
        for name in sorted(n for n in pending if descendants[n] & blocked):
            pending.discard(name)
            blocked.add(name)
            message = "not compensated: a step that depends on it could not be compensated"
            run.outcomes[name].compensation_error = message
            run.errors.append(f"step '{name}': {message}")
        # In a DAG some pending step always has no pending descendant.
        ready = sorted(n for n in pending if not descendants[n] & pending)
        results = await asyncio.gather(*(_compensate_step(run, n) for n in ready))
        for name, ok in zip(ready, results, strict=True):
            pending.discard(name)
            if not ok:
                blocked.add(name)
    run.status = SagaStatus.FAILED if blocked else SagaStatus.COMPENSATED


async def _compensate_step(run: SagaRun, name: str) -> bool:
    step = run.definition.step(name)
    outcome = run.outcomes[name]
    if step.compensation is None:
        outcome.status = StepStatus.COMPENSATED
        await run.record(TransitionKind.COMPENSATION_COMPLETED, step=name)
        return True
    policy = run.options.for_step(step)
    retries = policy.compensation_retries
    outcome.status = StepStatus.COMPENSATING
    await run.record(TransitionKind.COMPENSATION_STARTED, step=name)
    for attempt in range(1, retries + 2):
        try:
            await invoke(run, step, policy.timeout_seconds, attempt, compensating=True)
        except (asyncio.CancelledError, LeaseLostError):
            raise
        except Exception as error:
            message = describe(error)
            if attempt <= retries:
                log.warning(
                    "compensation of step %r failed (attempt %d): %s",
                    name,
                    attempt,
                    message,
                    extra=fields(
                        saga_id=run.saga_id,
                        saga_name=run.definition.name,
                        step=name,
                        attempt=attempt,
                        correlation_id=run.correlation_id,
                    ),
                )
                await asyncio.sleep(policy.delay(attempt))
                continue
            outcome.status = StepStatus.COMPENSATION_FAILED
            outcome.compensation_error = message
            run.errors.append(f"compensation of step '{name}': {message}")
            await run.record(TransitionKind.COMPENSATION_FAILED, step=name, error=message)
            return False
        outcome.status = StepStatus.COMPENSATED
        await run.record(TransitionKind.COMPENSATION_COMPLETED, step=name)
        return True
    raise AssertionError("unreachable: the attempt loop always returns")
