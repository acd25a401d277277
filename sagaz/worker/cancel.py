"""Cancelling a saga on an operator's request (`sagaz cancel`), through its lease.

The request is a mark on the saga row (`cancel_requested_at`, `request_cancel`); it
interrupts nothing by itself, and a saga that finishes first simply finishes.

* A saga no worker holds (PENDING, or RUNNING with an expired lease) is compensated by
  the next worker that claims it: the claim reads the mark and the run starts compensating
  at once (as a given-up saga would, with `CANCELLED_ERROR` as its error). A PENDING saga
  has nothing to undo and ends COMPENSATED without running a step.
* A saga a worker is running: the worker learns of the mark when it renews its leases
  (every third of the lease) and stops the run at its next step boundary - once no step
  of the saga is running, a step in flight being allowed to finish (or its attempt to
  fail, instead of being retried) and record its result, so its effects are known and
  compensated. The worker then gives the lease back and the
  saga is claimed again as above: every step whose action succeeded is compensated, and
  no step runs twice. A saga already compensating is left to finish its compensation.
"""

from __future__ import annotations

import logging
from datetime import datetime

import sqlalchemy as sa

from sagaz.journal import Transition, TransitionKind
from sagaz.logging import fields
from sagaz.run_context import LeaseClock
from sagaz.store.schema import sagas
from sagaz.store.statements import SAGA_CHANNEL

log = logging.getLogger("sagaz.worker")

CANCELLED_ERROR = "cancelled by an operator (sagaz cancel)"
"""The error a cancelled saga ends with."""

CANCELLABLE_STATUSES = ("pending", "running")
"""The saga statuses a cancel request applies to."""


def request_cancel(connection: sa.Connection, saga_id: str, *, now: datetime) -> bool:
    """Mark the saga for cancellation; True when it is PENDING or RUNNING (a repeated
    request keeps the first time), False - changing nothing - otherwise. Runs in the
    caller's transaction (commit it); on PostgreSQL, idle workers wake at commit."""
    marked = connection.execute(
        sa.update(sagas)
        .where(sagas.c.id == saga_id, sagas.c.status.in_(CANCELLABLE_STATUSES))
        .values(cancel_requested_at=sa.func.coalesce(sagas.c.cancel_requested_at, now))
    ).rowcount
    if marked and connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_notify(SAGA_CHANNEL, sa.func.current_schema())))
    return bool(marked)


#: Where a step's attempt ends: a step boundary (an attempt that failed and would be
#: retried ends there too: a step retrying against a service that is down is a usual
#: reason to cancel).
_STEP_ENDS = frozenset(
    {TransitionKind.STEP_COMPLETED, TransitionKind.STEP_FAILED, TransitionKind.STEP_ATTEMPT_FAILED}
)


class CancelWatch:
    """One worker's cancel requests for the sagas it runs: a transition listener that
    tracks which steps of each saga are in flight, and stops a run (its `LeaseClock`
    reports the lease lost, so the engine starts nothing more) at a step boundary."""

    def __init__(self) -> None:
        self._requested: dict[str, LeaseClock] = {}
        self._in_flight: dict[str, set[str]] = {}
        self._compensating: set[str] = set()
        #: Filled by the claim (`claims.claim_sagas(cancelled=)`): claimed sagas to cancel.
        self.claimed: set[str] = set()
        #: Filled by the lease renewal (`claims.renew_leases(cancelled=)`).
        self.renewed: set[str] = set()
        #: Runs stopped for a cancel request: the worker gives their leases back.
        self.stopped: set[str] = set()

    def give_up(self, saga_id: str) -> str | None:
        """`CANCELLED_ERROR` when the claimed saga is to be cancelled (its run then
        compensates at once and is left alone), else None."""
        if saga_id not in self.claimed:
            return None
        self.claimed.discard(saga_id)
        self._compensating.add(saga_id)
        log.info(
            "saga %s: compensating it, as an operator asked (sagaz cancel)",
            saga_id,
            extra=fields(saga_id=saga_id),
        )
        return CANCELLED_ERROR

    def stop_requested(self, leases: dict[str, LeaseClock]) -> None:
        """After a renewal: ask the runs whose sagas carry a request to stop."""
        for saga_id in sorted(self.renewed & leases.keys()):
            self.requested(saga_id, leases[saga_id])
        self.renewed.clear()

    def requested(self, saga_id: str, lease: LeaseClock) -> None:
        """The saga's row carries a cancel request: stop its run now if no step is in
        flight, else when the last one in flight finishes."""
        if saga_id in self._compensating or saga_id in self.stopped:
            return
        if saga_id not in self._requested:
            log.info(
                "saga %s: cancel requested; stopping at its next step boundary",
                saga_id,
                extra=fields(saga_id=saga_id),
            )
        self._requested[saga_id] = lease
        if not self._in_flight.get(saga_id):
            self._stop(saga_id)

    def _stop(self, saga_id: str) -> None:
        self.stopped.add(saga_id)
        self._requested.pop(saga_id).lost()

    def __call__(self, transition: Transition) -> None:
        saga_id, kind = transition.saga_id, transition.kind
        if kind is TransitionKind.STEP_STARTED and transition.step is not None:
            self._in_flight.setdefault(saga_id, set()).add(transition.step)
        elif kind in _STEP_ENDS:
            running = self._in_flight.get(saga_id, set())
            running.discard(transition.step or "")
            if saga_id in self._requested and not running:
                self._stop(saga_id)
        elif kind is TransitionKind.SAGA_COMPENSATING:
            self._compensating.add(saga_id)
            self._requested.pop(saga_id, None)

    def forget(self, saga_id: str) -> None:
        """The run ended: drop what was kept about it."""
        self._requested.pop(saga_id, None)
        self._in_flight.pop(saga_id, None)
        self._compensating.discard(saga_id)
        self.stopped.discard(saga_id)
        self.claimed.discard(saga_id)


__all__ = ["CANCELLABLE_STATUSES", "CANCELLED_ERROR", "CancelWatch", "request_cancel"]
