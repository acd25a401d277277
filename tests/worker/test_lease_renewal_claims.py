"""A renewal that no longer finds a lease tells a run its own finish (the lease given back,
nobody claiming since) from a takeover: only a takeover stops the run."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa

from sagaz.journal import utcnow
from sagaz.store.schema import sagas
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
