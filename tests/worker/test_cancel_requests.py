"""Cancel requests (`sagaz.worker.cancel`): the claim and the lease renewal report the
marked sagas (PostgreSQL and SQLite), and a worker's `CancelWatch` stops a run only once
no step of it is in flight - the last parallel step finishing is the boundary - and never
lets a later renewal revive the stopped run's lease."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from sagaz.journal import Transition, TransitionKind, utcnow
from sagaz.run_context import LeaseClock
from sagaz.store.schema import sagas
from sagaz.worker import claims
from sagaz.worker.cancel import CANCELLED_ERROR, CancelWatch, request_cancel

SAGA = "0b8f2a9e-6c0d-4f39-8a51-3d7f1c2e9b40"
OTHER = "5d2e8c41-9a7b-4e13-b0f6-2c4a8e1d7f53"


def insert(connection: sa.Connection, saga_id: str, status: str) -> None:
    now = utcnow()
    connection.execute(
        sa.insert(sagas).values(
            id=saga_id, name="cancellable", status=status, context={}, created_at=now,
            updated_at=now,
        )
    )  # fmt: skip


def test_claims_and_renewals_report_cancel_requests(sync_engine: sa.Engine) -> None:
    now = utcnow()
    with sync_engine.begin() as connection:
        insert(connection, SAGA, "pending")
        insert(connection, OTHER, "completed")
        assert request_cancel(connection, SAGA, now=now)
        assert not request_cancel(connection, OTHER, now=now)  # finished: nothing to cancel
        assert request_cancel(connection, SAGA, now=now + timedelta(seconds=5))  # kept first
        marked = connection.execute(sa.select(sagas.c.cancel_requested_at)).scalars().all()
        assert [at is not None for at in marked].count(True) == 1

        cancelled: set[str] = set()
        (claimed,) = claims.claim_sagas(
            connection, owner="w", names=["cancellable"], limit=5, lease_seconds=5, now=now,
            cancelled=cancelled,
        )  # fmt: skip
        assert cancelled == {SAGA}
        renewed: set[str] = set()
        held = claims.renew_leases(
            connection, owner="w", leases={SAGA: claimed.lease_token}, lease_seconds=5,
            now=now, cancelled=renewed,
        )  # fmt: skip
        assert held == renewed == {SAGA}
        # compensating already (its cancel took effect): no longer reported
        connection.execute(sa.update(sagas).values(status="compensating"))
        renewed.clear()
        claims.renew_leases(
            connection, owner="w", leases={SAGA: claimed.lease_token}, lease_seconds=5,
            now=now, cancelled=renewed,
        )  # fmt: skip
        assert renewed == set()


def step(kind: TransitionKind, name: str | None = None, saga_id: str = SAGA) -> Transition:
    return Transition(kind=kind, saga_id=saga_id, saga_name="cancellable", at=utcnow(), step=name)


def lease() -> LeaseClock:
    clock = LeaseClock(30.0, 1.0, 0.0, clock=lambda: 1.0)
    assert clock.held()
    return clock


def test_a_run_stops_when_its_last_step_in_flight_finishes() -> None:
    watch, clock = CancelWatch(), lease()
    watch(step(TransitionKind.STEP_STARTED, "a"))
    watch(step(TransitionKind.STEP_STARTED, "b"))  # a parallel layer
    watch(step(TransitionKind.STEP_STARTED, "x", saga_id=OTHER))
    watch.renewed.add(SAGA)
    watch.stop_requested({SAGA: clock})
    assert clock.held()  # two steps in flight: they finish first
    watch(step(TransitionKind.STEP_COMPLETED, "a"))
    assert clock.held()
    watch(step(TransitionKind.STEP_ATTEMPT_FAILED, "b"))  # it would be retried: stop instead
    assert not clock.held()  # the boundary: nothing in flight, no further step may start
    assert watch.stopped == {SAGA}
    clock.granted(0.5)  # a renewal that still found the lease cannot revive the run
    assert not clock.held()
    watch.forget(SAGA)
    assert watch.stopped == set()


def test_a_run_between_steps_stops_at_once_and_a_compensating_one_is_left_alone() -> None:
    watch, idle, compensating = CancelWatch(), lease(), lease()
    watch.requested(SAGA, idle)
    assert not idle.held()
    watch(step(TransitionKind.SAGA_COMPENSATING, saga_id=OTHER))
    watch.requested(OTHER, compensating)
    assert compensating.held()


def test_a_claimed_cancelled_saga_gives_up_once_and_is_not_stopped() -> None:
    watch, clock = CancelWatch(), lease()
    watch.claimed.add(SAGA)
    assert watch.give_up(OTHER) is None
    assert watch.give_up(SAGA) == CANCELLED_ERROR
    assert watch.give_up(SAGA) is None
    watch.requested(SAGA, clock)  # its own compensating run: left alone
    assert clock.held()
