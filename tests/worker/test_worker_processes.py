"""`sagaz worker` processes against real PostgreSQL: a worker killed with SIGKILL in the
middle of a saga is taken over after its lease expires, and three worker processes share
1,000 sagas - every step runs exactly once."""

from __future__ import annotations

import signal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.store.schema import outbox, saga_steps, sagas
from tests.conftest import DatabaseUrls
from tests.worker.sagas_for_workers import ThreeStepSaga, app_metadata, payments, step_runs
from tests.worker.worker_processes import WorkerProcesses, scalar, wait_until

WORKER_MODULE = "tests.worker.sagas_for_workers"
APP_METADATA = app_metadata


def test_sigkilled_worker_is_taken_over_and_every_step_runs_once(
    engine: sa.Engine, workers: WorkerProcesses, pg: DatabaseUrls
) -> None:
    with Session(engine) as session:
        saga_id = start_saga(session, ThreeStepSaga, {"n": 1, "charge_sleep": 30})
        session.commit()
    first = workers.start()
    charging = (
        sa.select(sa.func.count())
        .select_from(saga_steps)
        .where(saga_steps.c.name == "charge", saga_steps.c.status == "running")
    )
    wait_until(lambda: scalar(engine, charging) == 1)
    # Inside charge's transaction: it has written its payment and sleeps, uncommitted.
    writing = sa.text(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name "
        "AND state = 'idle in transaction' AND query ILIKE 'INSERT INTO app_payments%'"
    ).bindparams(name=pg.application_name)
    wait_until(lambda: scalar(engine, writing) == 1)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    with engine.begin() as connection:  # the retry must not sleep for 30 s again
        connection.execute(
            sa.update(sagas).values(
                context=sa.cast({"n": 1, "charge_sleep": 0}, sagas.c.context.type)
            )
        )
    workers.start()
    done = sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
    wait_until(lambda: scalar(engine, done) == 1)
    workers.stop_all()
    with engine.connect() as connection:
        runs = connection.execute(
            sa.select(step_runs.c.step, sa.func.count()).group_by(step_runs.c.step)
        ).all()
        steps = {
            row.name: row
            for row in connection.execute(
                sa.select(saga_steps).where(saga_steps.c.saga_id == saga_id)
            )
        }
        charged = connection.scalar(sa.select(sa.func.count()).select_from(payments))
        events = connection.scalar(sa.select(sa.func.count()).select_from(outbox))
        saga = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    # Each step's effects (its own transactional writes) exist exactly once: the killed
    # attempt of `charge` rolled back with its process.
    assert dict(runs) == {"reserve": 1, "charge": 1, "ship": 1}
    assert charged == 1
    assert events == 1
    assert {name: row.status for name, row in steps.items()} == {
        "reserve": "completed",
        "charge": "completed",
        "ship": "completed",
    }
    assert steps["charge"].attempts == 2  # the interrupted attempt is counted
    assert steps["reserve"].attempts == 1
    assert saga.attempts == 2  # claimed by the killed worker, then by the second
    assert saga.lease_owner is None


def test_three_worker_processes_share_a_thousand_sagas(
    engine: sa.Engine, workers: WorkerProcesses, pg: DatabaseUrls
) -> None:
    total = 1000
    for _ in range(3):
        workers.start("--concurrency", "20", "--lease-seconds", "2")
    # All three are up (each LISTENs on the sagas channel) before the sagas are committed,
    # so that the first one up cannot run all of them alone.
    listening = sa.text(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query ILIKE 'LISTEN%sagaz_sagas%' AND application_name = :name"
    ).bindparams(name=pg.application_name)
    wait_until(lambda: scalar(engine, listening) == 3)
    with Session(engine) as session:
        for n in range(total):
            start_saga(session, ThreeStepSaga, {"n": n})
        session.commit()
    done = sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
    wait_until(lambda: scalar(engine, done) == total, seconds=240)
    workers.stop_all()
    with engine.connect() as connection:
        per_step = connection.execute(
            sa.select(step_runs.c.n, step_runs.c.step, sa.func.count()).group_by(
                step_runs.c.n, step_runs.c.step
            )
        ).all()
        pids = connection.scalar(sa.select(sa.func.count(sa.distinct(step_runs.c.pid))))
        claims = connection.scalar(sa.select(sa.func.sum(sagas.c.attempts)))
    # Every step's effects exist exactly once. On a loaded 2-core machine a lease can lapse
    # and another worker take a saga over (claims > total); fencing then refuses the old
    # owner's writes, so even then nothing runs twice to completion.
    assert len(per_step) == 3 * total
    assert {count for _n, _step, count in per_step} == {1}
    assert claims is not None
    assert claims >= total
    assert pids == 3
