"""`sagaz worker` processes against real PostgreSQL, for the lease deadline and the
give-up rule:

* a worker paused (SIGSTOP) past its lease inside a plain step, while another worker takes
  the saga over and compensates that step, writes no effect of the step once resumed
  (the step asks `current_run().lease_held()` before its irreversible call) and starts no
  further step;
* a saga whose every claim but the last is ended by a SIGKILL survives more than
  max_attempts claims (6 kills at --max-attempts 3), as long as each claim made progress;
* a saga that crashes its worker every time is still given up: its completed steps are
  compensated; when the compensation crashes too it is FAILED naming the steps left
  undone, and `resume_saga` hands it back once the cause is fixed.
"""

from __future__ import annotations

import signal

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.journal import utcnow
from sagaz.store.schema import saga_steps, sagas
from sagaz.worker.claims import resume_saga
from tests.conftest import DatabaseUrls
from tests.worker.sagas_for_leases import (
    CrashingSaga,
    SixStepSaga,
    StallingSaga,
    app_metadata,
    effects,
)
from tests.worker.worker_processes import WorkerProcesses, scalar, wait_until

WORKER_MODULE = "tests.worker.sagas_for_leases"
APP_METADATA = app_metadata


def started(engine: sa.Engine, saga: object, pg: DatabaseUrls) -> str:
    with Session(engine) as session:
        saga_id = start_saga(session, saga, {"effects_url": pg.url})  # type: ignore[arg-type]
        session.commit()
    return saga_id


def effect_rows(engine: sa.Engine) -> list[sa.Row[tuple[int, str, str, int, int]]]:
    with engine.connect() as connection:
        return list(connection.execute(sa.select(effects).order_by(effects.c.id)))


def saga_row(engine: sa.Engine, saga_id: str) -> sa.Row[tuple[object, ...]]:
    with engine.connect() as connection:
        return connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()


def status_of(engine: sa.Engine, saga_id: str) -> str:
    return str(saga_row(engine, saga_id).status)


def test_a_worker_paused_past_its_lease_writes_no_effect_after_the_compensation(
    engine: sa.Engine, workers: WorkerProcesses, pg: DatabaseUrls
) -> None:
    saga_id = started(engine, StallingSaga, pg)
    paused = workers.start()
    entered = sa.select(sa.func.count()).select_from(effects).where(effects.c.pid == paused.pid)
    wait_until(lambda: scalar(engine, entered) == 1)
    paused.send_signal(signal.SIGSTOP)  # inside `act`, before its effect
    workers.start()
    wait_until(lambda: status_of(engine, saga_id) == "compensated")
    paused.send_signal(signal.SIGCONT)
    wait_until(lambda: scalar(engine, entered) == 2)  # `act` decided about its effect
    workers.stop_all()  # whatever the resumed worker would still do, it has done now
    rows = [(row.pid == paused.pid, row.step, row.kind, row.fence) for row in effect_rows(engine)]
    assert rows == [
        (True, "act", "entered", 1),
        (False, "act", "entered", 2),  # the new owner runs `act` again (at-least-once)
        (False, "act", "effect", 2),
        (False, "fail", "entered", 2),
        (False, "act", "undo", 2),
        (True, "act", "skipped", 1),  # after the undo: the resumed step did not act
    ]
    saga = saga_row(engine, saga_id)
    assert (saga.status, saga.attempts, saga.lease_token) == ("compensated", 2, 2)


def test_a_saga_survives_more_kills_than_max_attempts_when_each_claim_made_progress(
    engine: sa.Engine, workers: WorkerProcesses, pg: DatabaseUrls
) -> None:
    saga_id = started(engine, SixStepSaga, pg)
    for step in ("s1", "s2", "s3", "s4", "s5", "s6"):
        worker = workers.start("--max-attempts", "3")  # fewer than the six kills
        first_entry = (
            sa.select(sa.func.count())
            .select_from(effects)
            .where(effects.c.step == step, effects.c.pid == worker.pid)
        )
        wait_until(lambda query=first_entry: scalar(engine, query) == 1)
        worker.kill()  # in the middle of the step, every time
        worker.wait()
    workers.start("--max-attempts", "3")
    wait_until(lambda: status_of(engine, saga_id) == "completed")
    workers.stop_all()
    saga = saga_row(engine, saga_id)
    assert saga.attempts == 7  # six claims ended by a kill, then one that finished
    assert saga.error is None
    with engine.connect() as connection:
        steps = dict(connection.execute(sa.select(saga_steps.c.name, saga_steps.c.status)).all())
    assert set(steps.values()) == {"completed"}


def test_a_saga_that_crashes_its_worker_every_time_is_given_up_and_can_be_resumed(
    engine: sa.Engine, workers: WorkerProcesses, pg: DatabaseUrls
) -> None:
    saga_id = started(engine, CrashingSaga, pg)

    def keep_a_worker_running() -> bool:
        if all(process.poll() is not None for process in workers.processes):
            workers.start("--max-attempts", "2")
        return status_of(engine, saga_id) in ("failed", "compensated")

    wait_until(keep_a_worker_running, seconds=120)
    saga = saga_row(engine, saga_id)
    assert saga.status == "failed"
    # Given up after 2 stalled claims (compensating a), then after a third one that
    # crashed in the compensation: FAILED, naming what is not undone.
    assert saga.error.startswith("gave up after 3 claims in a row that made no progress")
    assert "while compensating; not compensated: a" in saga.error
    kinds = [(row.step, row.kind) for row in effect_rows(engine)]
    # a completed once; b crashed its worker three times (the first claim made progress:
    # a finished); the give-up compensated a, which crashed the worker too.
    assert kinds == [("a", "effect"), *[("b", "crash")] * 3, ("a", "undo-crash")]
    crashed = [process.returncode for process in workers.processes]
    assert crashed == [3, 3, 3, 4, *crashed[4:]]

    # The operator fixes the compensation and resumes the saga.
    with engine.begin() as connection:
        connection.execute(sa.insert(effects).values(step="-", kind="allow-undo", pid=0, fence=0))
        assert resume_saga(connection, saga_id, now=utcnow())
        assert not resume_saga(connection, "00000000-0000-0000-0000-000000000000", now=utcnow())

    def compensated() -> bool:
        keep_a_worker_running()
        return status_of(engine, saga_id) == "compensated"

    wait_until(compensated, seconds=60)
    workers.stop_all()
    kinds = [(row.step, row.kind) for row in effect_rows(engine)]
    assert kinds[-1] == ("a", "undo")
    assert kinds.count(("a", "effect")) == 1  # never re-run
