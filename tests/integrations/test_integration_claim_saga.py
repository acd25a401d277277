"""claims.claim_saga: lease one specific saga, as a worker's claim would - on PostgreSQL
and SQLite."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.journal import SagaSnapshot, utcnow
from sagaz.store.schema import sagas
from sagaz.types import SagaStatus
from sagaz.worker.claims import UNKNOWN_SAGA_ERROR, claim_saga, claim_sagas
from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import IntegrationOrderSaga


@pytest.fixture
def engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


def started(engine: sa.Engine) -> str:
    with Session(engine) as session:
        saga_id = start_saga(session, IntegrationOrderSaga, {"n": 1})
        session.commit()
    return saga_id


def claim(
    engine: sa.Engine, saga_id: str, owner: str, seconds_from_now: float = 0
) -> SagaSnapshot | None:
    with engine.begin() as connection:
        return claim_saga(
            connection,
            saga_id,
            owner=owner,
            lease_seconds=30,
            now=utcnow() + timedelta(seconds=seconds_from_now),
        )


def test_claims_a_pending_saga_and_bumps_its_token(engine: sa.Engine) -> None:
    saga_id = started(engine)
    snapshot = claim(engine, saga_id, "a")
    assert snapshot is not None
    assert snapshot.saga_id == saga_id
    assert snapshot.status is SagaStatus.PENDING
    assert snapshot.context == {"n": 1}
    assert (snapshot.lease_owner, snapshot.lease_token, snapshot.attempts) == ("a", 1, 1)


def test_a_live_lease_is_never_claimed_twice(engine: sa.Engine) -> None:
    saga_id = started(engine)
    assert claim(engine, saga_id, "a") is not None
    assert claim(engine, saga_id, "b") is None
    assert claim(engine, saga_id, "a") is None  # not even by its owner: it is running
    with engine.begin() as connection:  # nor by a worker's batch claim
        assert (
            claim_sagas(
                connection,
                owner="w",
                names=["integration-order"],
                limit=10,
                lease_seconds=30,
                now=utcnow(),
            )
            == []
        )


def test_an_expired_lease_is_taken_over_with_a_new_token(engine: sa.Engine) -> None:
    saga_id = started(engine)
    assert claim(engine, saga_id, "a") is not None
    snapshot = claim(engine, saga_id, "b", seconds_from_now=31)
    assert snapshot is not None
    assert (snapshot.lease_owner, snapshot.lease_token, snapshot.attempts) == ("b", 2, 2)


def test_missing_and_finished_sagas_are_not_claimed(engine: sa.Engine) -> None:
    assert claim(engine, "00000000-0000-0000-0000-000000000000", "a") is None
    saga_id = started(engine)
    with engine.begin() as connection:
        connection.execute(sa.update(sagas).where(sagas.c.id == saga_id).values(status="completed"))
    assert claim(engine, saga_id, "a") is None


def test_a_claim_clears_the_unknown_saga_error_only(engine: sa.Engine) -> None:
    first, second = started(engine), None
    with Session(engine) as session:
        second = start_saga(session, IntegrationOrderSaga, {"n": 2})
        session.commit()
    with engine.begin() as connection:
        connection.execute(
            sa.update(sagas).where(sagas.c.id == first).values(error=f"{UNKNOWN_SAGA_ERROR} x")
        )
        connection.execute(sa.update(sagas).where(sagas.c.id == second).values(error="kept"))
    first_claim, second_claim = claim(engine, first, "a"), claim(engine, second, "a")
    assert first_claim is not None
    assert first_claim.error is None
    assert second_claim is not None
    assert second_claim.error == "kept"
