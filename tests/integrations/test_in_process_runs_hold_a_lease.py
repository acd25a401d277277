"""An in-process run - `Saga.run` with a database, FastAPI's `saga_factory` + `run`,
Flask's `run_sync` - holds a worker's lease from its first write to its last: a worker
polling the same PostgreSQL database with a much shorter lease never claims it, and each
step runs exactly once. (Without the lease, the worker took the live run over and ran
its step a second time.) Django's `run_saga`: tests/integrations/django."""

import asyncio
from typing import Annotated

import pytest
import sqlalchemy as sa
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from sagaz import SagaConfig, SagaStatus, start_saga
from sagaz.errors import LeaseLostError
from sagaz.integrations.fastapi import create_lifespan, saga_factory
from sagaz.journal import utcnow
from sagaz.store.schema import sagas
from sagaz.worker import claims
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import build_app, running
from tests.integrations.integration_helpers import (
    IntegrationOrderSaga,
    SlowLeaseSaga,
    polling_worker,
    saga_row,
    slow_effects,
    status_of,
    wait_until_sync,
)

pytestmark = pytest.mark.postgres


def worker_is_polling(sync_db: sa.Engine) -> None:
    """A saga started for the polling worker completes: it is claiming from this database."""
    with Session(sync_db) as session:
        saga_id = start_saga(session, IntegrationOrderSaga, {"n": "probe"})
        session.commit()
    wait_until_sync(lambda: status_of(sync_db, saga_id) == "completed")


def ran_once_under_one_claim(sync_db: sa.Engine, saga_id: str, key: str) -> None:
    assert [step for run, step in slow_effects if run == key] == ["first", "second"]
    row = saga_row(sync_db, saga_id)
    assert row is not None
    # One claim (its own), released at the end: no worker ever took it over.
    assert (row.status, row.attempts, row.lease_token, row.lease_owner) == (
        "completed",
        1,
        1,
        None,
    )


def test_saga_run_with_a_database(config: SagaConfig, sync_db: sa.Engine) -> None:
    async def run() -> str:
        await config.initialize()
        try:
            result = await SlowLeaseSaga(config=config).run({"n": "plain"})
        finally:
            await config.close()
        assert result.status is SagaStatus.COMPLETED
        return result.saga_id

    slow_effects.clear()
    with polling_worker(str(config.database_url)) as worker:
        worker_is_polling(sync_db)
        saga_id = asyncio.run(run())
    assert worker.completed == 1  # the probe only
    ran_once_under_one_claim(sync_db, saga_id, "plain")


def test_fastapi_saga_factory_run(config: SagaConfig, sync_db: sa.Engine) -> None:
    app = FastAPI(lifespan=create_lifespan(config))

    @app.post("/slow")
    async def slow(
        saga: Annotated[SlowLeaseSaga, Depends(saga_factory(SlowLeaseSaga))],
    ) -> dict[str, str]:
        result = await saga.run({"n": "fastapi"})
        return {"saga_id": result.saga_id, "status": result.status.value}

    slow_effects.clear()
    with polling_worker(str(config.database_url)) as worker, TestClient(app) as client:
        worker_is_polling(sync_db)
        body = client.post("/slow").json()
    assert body["status"] == "completed"
    assert worker.completed == 1  # the probe only
    ran_once_under_one_claim(sync_db, body["saga_id"], "fastapi")


def test_flask_run_sync(app_db: DatabaseUrls, sync_db: sa.Engine) -> None:
    app, extension = build_app(app_db.url)
    slow_effects.clear()
    with running(app, extension), polling_worker(app_db.url) as worker:
        worker_is_polling(sync_db)
        with app.app_context():
            result = extension.run_sync(SlowLeaseSaga, {"n": "flask"})
    assert result.status is SagaStatus.COMPLETED
    assert worker.completed == 1  # the probe only
    ran_once_under_one_claim(sync_db, result.saga_id, "flask")


async def test_saga_run_of_an_existing_saga_resumes_returns_or_refuses(
    config: SagaConfig, sync_db: sa.Engine
) -> None:
    """With the id of a finished saga, `run` returns its result and runs nothing; with
    the id of a saga another worker holds, it raises LeaseLostError and changes nothing;
    a cancelled run gives its lease back at once."""
    await config.initialize()
    try:
        saga = IntegrationOrderSaga(config=config)
        done = await saga.run({"n": "once"})
        assert (await saga.run({"n": "again"}, saga_id=done.saga_id)).status is (
            SagaStatus.COMPLETED
        )
        row = saga_row(sync_db, done.saga_id)
        assert row is not None
        assert (row.attempts, row.context["n"]) == (1, "once")  # not claimed, not rerun

        with Session(sync_db) as session:
            held = start_saga(session, IntegrationOrderSaga, {"n": "held"})
            session.commit()
        with sync_db.begin() as connection:
            claims.claim_saga(connection, held, owner="other", lease_seconds=30, now=utcnow())
        with pytest.raises(LeaseLostError, match="another worker"):
            await saga.run({}, saga_id=held)
        row = saga_row(sync_db, held)
        assert row is not None
        assert (row.status, row.lease_owner) == ("pending", "other")

        slow = asyncio.create_task(SlowLeaseSaga(config=config).run({"n": "cancelled"}))
        async with asyncio.timeout(15):
            while ("cancelled", "first") not in slow_effects:  # inside its first step
                await asyncio.sleep(0.01)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        with sync_db.connect() as connection:
            cancelled = connection.execute(
                sa.select(sagas.c.status, sagas.c.lease_owner).where(
                    sagas.c.name == SlowLeaseSaga.saga_name
                )
            ).one()
        assert tuple(cancelled) == ("running", None)  # given back for a worker at once
    finally:
        await config.close()
