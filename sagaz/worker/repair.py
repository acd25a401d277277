"""Handing a FAILED saga back to the workers once an operator fixed its cause
(`sagaz retry`).

A FAILED saga is either one that could not run or go on (its row could not be read, a
run given up while its compensation kept crashing the worker before anything was
compensated) or one whose compensation did not complete. `retry_saga` picks what the
saga's steps allow:

* **resume** - no compensation has started on any step: the saga becomes RUNNING again,
  its error cleared, and the next worker resumes it after its last completed step
  (completed steps are not run again; a failed step runs again). It ends COMPLETED, or is
  compensated if a step fails again.
* **compensate** - a compensation has started (or `compensate=True`): the saga becomes
  COMPENSATING (`sagaz.worker.claims.resume_saga`) and every step whose action succeeded
  and is not compensated yet is compensated; it ends COMPENSATED (or FAILED again).

Either way the saga gets a fresh give-up budget and no lease, so the next worker claims it
at once, under a lease like any other run.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import sqlalchemy as sa

from sagaz.errors import SagazError
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.statements import SAGA_CHANNEL
from sagaz.types import SagaStatus, StepStatus
from sagaz.worker.claims import resume_saga

COMPENSATION_BEGUN = frozenset(
    {StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED}
)
"""Step statuses that show a compensation has begun: the saga can only go backwards."""


class RetryRefused(SagazError, ValueError):
    """The saga cannot be retried (unknown, not FAILED, or asked to resume although a
    compensation has begun); the message says why."""


class Retry(StrEnum):
    """What `retry_saga` did."""

    RESUMED = "resumed"
    COMPENSATING = "compensating"


def retry_saga(
    connection: sa.Connection, saga_id: str, *, now: datetime, compensate: bool | None = None
) -> Retry:
    """Hand the FAILED saga `saga_id` back to the workers (see the module docstring).

    `compensate`: None picks from the steps' state; True re-runs the compensation;
    False insists on resuming (refused once a compensation has begun). Raises
    RetryRefused, changing nothing, when the saga is unknown or not FAILED. Runs in the
    caller's transaction (commit it)."""
    query = sa.select(sagas.c.status).where(sagas.c.id == saga_id)
    if connection.dialect.name == "postgresql":
        query = query.with_for_update()  # two retries at once: the second waits, then sees
    status = connection.execute(query).scalar_one_or_none()
    if status is None:
        raise RetryRefused(f"there is no saga {saga_id}")
    if status != SagaStatus.FAILED.value:
        raise RetryRefused(f"saga {saga_id} is {status}; only a FAILED saga can be retried")
    step_statuses = connection.execute(
        sa.select(saga_steps.c.status).where(saga_steps.c.saga_id == saga_id)
    ).scalars()
    begun = any(value in COMPENSATION_BEGUN for value in step_statuses)
    if compensate is False and begun:
        raise RetryRefused(
            f"saga {saga_id}: its compensation has begun, so it cannot resume going "
            "forward; retry it to compensate the rest"
        )
    _wake_workers(connection)
    if compensate or begun:
        resume_saga(connection, saga_id, now=now)
        return Retry.COMPENSATING
    connection.execute(
        sa.update(sagas)
        .where(sagas.c.id == saga_id, sagas.c.status == SagaStatus.FAILED.value)
        .values(
            status=SagaStatus.RUNNING.value,
            error=None,
            stalled_claims=0,
            claimed_at=None,
            lease_owner=None,
            lease_expires_at=None,
            updated_at=now,
        )
    )
    return Retry.RESUMED


def _wake_workers(connection: sa.Connection) -> None:
    """On PostgreSQL, idle workers wake when the transaction commits."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_notify(SAGA_CHANNEL, sa.func.current_schema())))


__all__ = ["COMPENSATION_BEGUN", "Retry", "RetryRefused", "retry_saga"]
