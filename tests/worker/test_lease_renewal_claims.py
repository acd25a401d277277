"""A renewal that no longer finds a lease tells a run its own finish (the lease given back,
nobody claiming since) from a takeover: only a takeover stops the run. And the give-up
budget's count of claims without progress, with its backoff."""

from __future__ import annotations

from datetime import datetime, timedelta

import sqlalchemy as sa

from sagaz.journal import utcnow
from sagaz.store.schema import saga_steps, sagas
from sagaz.worker import claims


def _pending_saga(connection: sa.Connection) -> str:
    saga_id = "6f1b4c52-6d5e-4d0e-9a55-0d1f3f0c2a11"
    now = utcnow()
    connection.execute(
        sa.insert(sagas).values(
            id=saga_id, name="renewal", status="pending", context={}, created_at=now,
            updated_at=now,
        )
    )  # fmt: skip
    return saga_id


def test_a_lease_given_back_by_its_holder_is_not_a_takeover(sync_engine: sa.Engine) -> None:
    now = utcnow()
    with sync_engine.begin() as connection:
        saga_id = _pending_saga(connection)
        first = claims.claim_saga(connection, saga_id, owner="a", lease_seconds=2, now=now)
        assert first is not None
        token = first.lease_token
        # the run finishes: its final write gives the lease back
        claims.release_leases(connection, owner="a", leases={saga_id: token})
        assert (
            claims.renew_leases(
                connection, owner="a", leases={saga_id: token}, lease_seconds=2, now=now
            )
            == set()
        )
        assert claims.released_by_holder(connection, leases={saga_id: token}) == {saga_id}
        # another worker claims it: now it is a takeover
        later = now + timedelta(seconds=1)
        second = claims.claim_saga(connection, saga_id, owner="b", lease_seconds=2, now=later)
        assert second is not None
        assert second.lease_token > token
        assert claims.released_by_holder(connection, leases={saga_id: token}) == set()
        claims.release_leases(connection, owner="b", leases={saga_id: second.lease_token})
        # given back by the other holder: still not ours
        assert claims.released_by_holder(connection, leases={saga_id: token}) == set()


def test_claims_without_progress_back_off_and_progress_or_a_refund_resets_them(
    sync_engine: sa.Engine,
) -> None:
    """The give-up budget's bookkeeping: each claim after one that made no progress counts
    one more stalled claim and holds the saga 1, 2, 4 ... s longer than the lease (so a
    saga that kills its workers is retried more and more slowly); a finished step sets
    the count back to 0, and a claim given back as an infrastructure failure (refund) is
    not counted."""
    lease = 2.0
    start = utcnow()

    def claim(at: datetime) -> tuple[int, float, int]:
        """Claim at `at`: (stalled claims, seconds the lease holds, token)."""
        with sync_engine.begin() as connection:
            snapshot = claims.claim_saga(
                connection, saga_id, owner="w", lease_seconds=lease, now=at
            )
            assert snapshot is not None, "the saga was not claimable"
            expires = connection.scalar(
                sa.select(sagas.c.lease_expires_at).where(sagas.c.id == saga_id)
            )
        held = (expires.replace(tzinfo=at.tzinfo) - at).total_seconds()
        return snapshot.stalled_claims, round(held, 3), snapshot.lease_token

    with sync_engine.begin() as connection:
        saga_id = _pending_saga(connection)
    at = start
    seen = []
    for _ in range(4):  # every run dies (its lease expires) before a step finishes
        stalled, held, _token = claim(at)
        seen.append((stalled, held))
        at += timedelta(seconds=held + 0.5)
    assert seen == [(0, 2.0), (1, 3.0), (2, 4.0), (3, 6.0)]
    assert claims.claim_backoff(50) == claims.MAX_CLAIM_BACKOFF_SECONDS

    with sync_engine.begin() as connection:  # the last run finished a step
        connection.execute(
            sa.insert(saga_steps).values(
                saga_id=saga_id, name="a", status="completed", attempts=1,
                finished_at=at - timedelta(seconds=1), updated_at=at,
            )
        )  # fmt: skip
    assert claim(at)[:2] == (0, 2.0)
    at += timedelta(seconds=2.5)
    stalled, _held, token = claim(at)
    assert stalled == 1
    with sync_engine.begin() as connection:  # that run lost its database connection
        released = claims.release_leases(
            connection, owner="w", leases={saga_id: token}, refund=True
        )
        assert released == 1
    assert claim(at + timedelta(seconds=0.1))[:2] == (1, 3.0)  # not 2: refunded
