"""How a worker ends a saga it will not run: given up after claims that made no progress,
or a row it cannot read.

* A saga going forward whose last `max_attempts` claims in a row made no progress is
  compensated (the engine runs with `give_up=`; it ends COMPENSATED, or FAILED if a
  compensation fails), its error saying why.
* A saga given up while compensating (its compensation keeps crashing the worker) is
  FAILED at once, running nothing; its error lists the steps left undone. Once the cause
  is fixed, `sagaz.worker.claims.resume_saga` hands it back to the workers.
* A saga whose row cannot be read is FAILED with the reason (naming the column).

Each of these FAILED transitions is reported to the listeners the saga's runs report to
(so `sagaz_sagas_finished_total{status="failed"}` counts it), as the engine's are.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sagaz._util import utcnow
from sagaz.engine import SagaEngine
from sagaz.journal import (
    Fence,
    SagaJournal,
    SagaSnapshot,
    Transition,
    TransitionKind,
    TransitionListener,
    notify_listeners,
)
from sagaz.logging import fields
from sagaz.run_context import LeaseClock
from sagaz.types import SagaStatus, StepStatus

log = logging.getLogger("sagaz.worker")

#: Step statuses whose effects are still in place (their action succeeded, not undone).
NOT_UNDONE = frozenset(
    {StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED}
)


DEFAULT_MAX_ATTEMPTS = 10
"""Claims in a row without progress before a saga is given up. Each such claim costs a
worker crash if the saga is the cause, and the backoff between them grows (1 s doubling,
at most 30 s), so ten take minutes of a saga crashing its workers; a healthy saga would
need ten runs in a row ended from outside before any of its steps finished (measured in
the chaos test: a worker SIGKILLed every 2-3 s and paused past its lease drove healthy
sagas to 5 such claims in a row, never near 10)."""


def listeners_of(
    runner: Callable[[str], tuple[object, SagaEngine]], name: str, worker: SagaEngine
) -> tuple[TransitionListener, ...]:
    """The listeners the runs of saga `name` report to - those of its engine (`runner`
    resolves it; a saga bound to a config adds the config's) - or `worker`'s when the
    name no longer resolves. Never raises."""
    try:
        return runner(name)[1].listeners
    except Exception:
        return worker.listeners


def give_up_reason(snapshot: SagaSnapshot, max_attempts: int) -> str | None:
    """Why the claimed saga is given up, or None to run it."""
    if snapshot.stalled_claims < max_attempts:
        return None
    return (
        f"gave up after {snapshot.stalled_claims} claims in a row that made no progress: "
        "each run of this saga ended before any step finished (its worker crashed, was "
        "killed or stalled past its lease - see the workers' logs)"
    )


async def fail_saga(
    journal: SagaJournal,
    saga_id: str,
    saga_name: str,
    fence: Fence,
    reason: str,
    listeners: tuple[TransitionListener, ...] = (),
) -> None:
    """End the saga FAILED with `reason`, running nothing, and tell `listeners` once it is
    written. Fenced; a write that fails is logged (the saga is claimed again later) and
    reported to no listener."""
    log.error(
        "saga %s %s: %s",
        saga_name,
        saga_id,
        reason,
        extra=fields(saga_id=saga_id, saga_name=saga_name),
    )
    transition = Transition(
        kind=TransitionKind.SAGA_FINISHED,
        saga_id=saga_id,
        saga_name=saga_name,
        at=utcnow(),
        status=SagaStatus.FAILED,
        error=reason,
        fence=fence,
    )
    try:
        await journal.record(transition)
    except Exception as error:
        log.error(
            "could not fail saga %s (%s); it will be claimed again",
            saga_id,
            error,
            extra=fields(saga_id=saga_id, saga_name=saga_name),
        )
        return
    await notify_listeners(listeners, transition, log)


async def abandon_compensation(
    journal: SagaJournal,
    snapshot: SagaSnapshot,
    fence: Fence,
    lease: LeaseClock,
    reason: str,
    listeners: tuple[TransitionListener, ...] = (),
) -> None:
    """FAILED, naming the steps left undone (read back from the journal); `listeners` are
    told as by `fail_saga`."""
    loaded = await journal.load(snapshot.saga_id)
    steps = loaded.steps if loaded is not None else {}
    undone = ", ".join(sorted(n for n, step in steps.items() if step.status in NOT_UNDONE))
    lease.check(snapshot.saga_id, "failing its compensation")
    await fail_saga(
        journal,
        snapshot.saga_id,
        snapshot.saga_name,
        fence,
        f"{reason}, while compensating; not compensated: {undone or 'none'} (fix the "
        "cause, then resume it with sagaz.worker.claims.resume_saga)",
        listeners,
    )
