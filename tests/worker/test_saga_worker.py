"""The saga worker in-process: claims, wake-ups, transactional steps, resume after a
takeover, give-up after repeated crashes, unknown sagas, graceful shutdown, and several
workers sharing one database - on PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sagaz import (
    Saga,
    SagaConfig,
    SagaStatus,
    StepStatus,
    Transition,
    TransitionKind,
    action,
    start_saga,
)
from sagaz.journal import utcnow
from sagaz.registry import registry
from sagaz.store.schema import outbox, sagas
from sagaz.store.stores import AsyncSagaStore, SagaStore
from sagaz.worker import SagaWorker
from sagaz.worker.claims import UNKNOWN_SAGA_ERROR
from tests.conftest import DatabaseUrls
from tests.worker.sagas_for_workers import ThreeStepSaga, app_metadata, payments, step_runs


@pytest.fixture
async def engines(db: DatabaseUrls) -> AsyncIterator[tuple[AsyncEngine, sa.Engine]]:
    async_engine = db.async_engine()
    sync_engine = db.sync_engine()
    app_metadata.create_all(sync_engine)
    yield async_engine, sync_engine
    await async_engine.dispose()
    sync_engine.dispose()


def make_worker(engines: tuple[AsyncEngine, sa.Engine], **options: Any) -> SagaWorker:
    async_engine, sync_engine = engines
    options.setdefault("lease_seconds", 2.0)
    options.setdefault("poll_interval", 0.05)
    return SagaWorker(
        async_engine, store=AsyncSagaStore(async_engine, sync_engine=sync_engine), **options
    )


async def start(engine: AsyncEngine, saga: Any, contexts: list[dict[str, Any]]) -> list[str]:
    async with AsyncSession(engine) as session:
        ids = [start_saga(session, saga, context) for context in contexts]
        await session.commit()
    return ids


async def wait_for(check: Callable[[], bool], seconds: float = 20) -> None:
    """Poll `check` (a blocking database read, so it runs in a thread: on SQLite a blocking
    read on the event loop's thread would wait for a write lock that only the loop can
    release) until it holds."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.02)


def statuses(sync_engine: sa.Engine) -> list[str]:
    with sync_engine.connect() as connection:
        return list(connection.scalars(sa.select(sagas.c.status)))


def all_done(sync_engine: sa.Engine, expected: int) -> bool:
    done = [s for s in statuses(sync_engine) if s in ("completed", "compensated", "failed")]
    return len(done) == expected


def run_counts(sync_engine: sa.Engine) -> dict[tuple[int, str], int]:
    with sync_engine.connect() as connection:
        rows = connection.execute(
            sa.select(step_runs.c.n, step_runs.c.step, sa.func.count()).group_by(
                step_runs.c.n, step_runs.c.step
            )
        )
        return {(row[0], row[1]): row[2] for row in rows}


class RunningWorker:
    def __init__(self, worker: SagaWorker) -> None:
        self.worker = worker
        self.task = asyncio.create_task(worker.run_until_stopped())

    async def stop(self) -> None:
        self.worker.stop()
        await asyncio.wait_for(self.task, 30)


async def test_worker_runs_started_sagas_with_transactional_steps(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    ids = await start(async_engine, ThreeStepSaga, [{"n": n} for n in range(10)])
    running = RunningWorker(make_worker(engines, concurrency=4))
    try:
        await wait_for(lambda: all_done(sync_engine, 10))
    finally:
        await running.stop()
    assert statuses(sync_engine) == ["completed"] * 10
    assert set(run_counts(sync_engine).values()) == {1}
    assert len(run_counts(sync_engine)) == 30
    with sync_engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(payments)) == 10
        events = connection.execute(sa.select(outbox.c.topic, outbox.c.key)).all()
    assert sorted(events) == sorted(("payments.charged", str(n)) for n in range(10))
    snapshot = SagaStore(sync_engine).get(ids[0])
    assert snapshot is not None
    assert snapshot.lease_owner is None  # finishing released the lease
    assert snapshot.context == {"n": 0, "reserved": True, "charged": True, "shipped": True}


async def test_a_failing_transactional_step_leaves_no_effects(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    (saga_id,) = await start(async_engine, ThreeStepSaga, [{"n": 1, "fail_charge": True}])
    running = RunningWorker(make_worker(engines))
    try:
        await wait_for(lambda: all_done(sync_engine, 1))
    finally:
        await running.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.COMPENSATED
    assert snapshot.steps["charge"].status is StepStatus.FAILED
    with sync_engine.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(payments)) == 0
        assert connection.scalar(sa.select(sa.func.count()).select_from(outbox)) == 0
    assert run_counts(sync_engine) == {(1, "reserve"): 1}  # charge's own row rolled back too


async def test_commit_in_this_process_wakes_the_worker(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    running = RunningWorker(make_worker(engines, poll_interval=60))
    try:
        await asyncio.sleep(0.1)  # the worker polled once and is now asleep for 60 s
        await start(async_engine, ThreeStepSaga, [{"n": 1}])
        await wait_for(lambda: all_done(sync_engine, 1), seconds=10)
    finally:
        await running.stop()


async def test_takeover_after_lease_expiry_resumes_after_completed_steps(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    (saga_id,) = await start(async_engine, ThreeStepSaga, [{"n": 7}])
    at = utcnow()
    name = ThreeStepSaga.saga_name
    SagaStore(sync_engine).record_many(
        [
            Transition(
                TransitionKind.SAGA_STARTED,
                saga_id,
                name,
                at,
                status=SagaStatus.RUNNING,
                context={"n": 7},
            ),
            Transition(
                TransitionKind.STEP_COMPLETED,
                saga_id,
                name,
                at,
                step="reserve",
                result={"reserved": "earlier"},
            ),
            Transition(TransitionKind.STEP_STARTED, saga_id, name, at, step="charge", attempt=1),
        ]
    )
    with sync_engine.begin() as connection:  # a worker that died holding the lease
        connection.execute(
            sa.update(sagas).values(
                lease_owner="dead-worker", lease_token=5, lease_expires_at=at - timedelta(seconds=1)
            )
        )
    running = RunningWorker(make_worker(engines))
    try:
        await wait_for(lambda: all_done(sync_engine, 1))
    finally:
        await running.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.COMPLETED
    assert snapshot.context["reserved"] == "earlier"  # loaded, not re-run
    assert run_counts(sync_engine) == {(7, "charge"): 1, (7, "ship"): 1}
    assert snapshot.lease_token == 6


async def test_a_saga_that_keeps_crashing_its_worker_is_given_up(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    (saga_id,) = await start(async_engine, ThreeStepSaga, [{"n": 1}])
    with sync_engine.begin() as connection:  # two claims in a row made no progress
        connection.execute(
            sa.update(sagas).values(
                attempts=3, stalled_claims=2, claimed_at=utcnow() - timedelta(hours=1)
            )
        )
    running = RunningWorker(make_worker(engines, max_attempts=3))
    try:
        await wait_for(lambda: all_done(sync_engine, 1))
    finally:
        await running.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    # The third stalled claim gives up: nothing runs; nothing had completed, so nothing
    # is compensated (test_give_up.py covers completed steps).
    assert snapshot.status is SagaStatus.COMPENSATED
    assert "gave up after 3 claims in a row that made no progress" in (snapshot.error or "")
    assert run_counts(sync_engine) == {}


async def test_unknown_saga_stays_visible_and_runs_once_a_worker_knows_it(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    with registry.isolated():

        class LateSaga(Saga):
            saga_name = "worker-late-saga"

            @action("only")
            async def only(self, ctx: Any) -> dict[str, Any]:
                return {"ran": True}

        (saga_id,) = await start(async_engine, LateSaga, [{}])
        registry.unregister("worker-late-saga")
        running = RunningWorker(make_worker(engines, unknown_saga_grace_seconds=0))

        def marked() -> bool:
            snapshot = SagaStore(sync_engine).get(saga_id)
            return snapshot is not None and (snapshot.error or "").startswith(UNKNOWN_SAGA_ERROR)

        try:
            await wait_for(marked)
            snapshot = SagaStore(sync_engine).get(saga_id)
            assert snapshot is not None
            assert snapshot.status is SagaStatus.PENDING
            assert "worker-late-saga" in (snapshot.error or "")
            registry.register("worker-late-saga", LateSaga)
            await wait_for(lambda: all_done(sync_engine, 1))
        finally:
            await running.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.COMPLETED
    assert snapshot.error is None


slow_calls: list[str] = []


class SlowSaga(Saga):
    saga_name = "worker-slow-saga"

    @action("slow")
    async def slow(self, ctx: Any) -> dict[str, Any]:
        slow_calls.append("slow")
        await asyncio.sleep(ctx["sleep"])
        return {"slow": True}

    @action("after", depends_on=["slow"])
    async def after(self, ctx: Any) -> None:
        slow_calls.append("after")


async def test_graceful_stop_releases_unfinished_sagas_for_another_worker(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    slow_calls.clear()
    (saga_id,) = await start(async_engine, SlowSaga, [{"sleep": 0.5}])
    first = RunningWorker(make_worker(engines, shutdown_grace_seconds=0.05, lease_seconds=30))
    async with asyncio.timeout(10):
        while slow_calls != ["slow"]:
            await asyncio.sleep(0.01)
    await first.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.RUNNING
    assert snapshot.steps["slow"].status is StepStatus.RUNNING  # interrupted, as by a crash
    assert snapshot.lease_owner is None  # released at once, not left to expire (30 s)
    second = RunningWorker(make_worker(engines))
    try:
        await wait_for(lambda: all_done(sync_engine, 1))
    finally:
        await second.stop()
    snapshot = SagaStore(sync_engine).get(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.COMPLETED
    # The interrupted step ran again (ordinary steps are at-least-once); the rest once.
    assert slow_calls == ["slow", "slow", "after"]


async def test_workers_sharing_a_database_run_each_saga_once(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    async_engine, sync_engine = engines
    total = 120
    await start(async_engine, ThreeStepSaga, [{"n": n} for n in range(total)])
    workers = [RunningWorker(make_worker(engines, concurrency=10)) for _ in range(3)]
    try:
        await wait_for(lambda: all_done(sync_engine, total), seconds=60)
    finally:
        for running in workers:
            await running.stop()
    assert statuses(sync_engine) == ["completed"] * total
    counts = run_counts(sync_engine)
    assert len(counts) == 3 * total
    assert set(counts.values()) == {1}
    assert sum(w.worker.completed for w in workers) == total


def test_worker_options_are_validated(engines: tuple[AsyncEngine, sa.Engine]) -> None:
    with pytest.raises(ValueError, match="concurrency"):
        make_worker(engines, concurrency=0)
    with pytest.raises(ValueError, match="lease_seconds"):
        make_worker(engines, lease_seconds=0)


async def test_notify_from_another_connection_wakes_the_worker(
    pg: DatabaseUrls,
) -> None:
    """A commit elsewhere (no in-process signal) wakes a worker polling only every 60 s."""
    async_engine, sync_engine = pg.async_engine(), pg.sync_engine()
    app_metadata.create_all(sync_engine)
    running = RunningWorker(make_worker((async_engine, sync_engine), poll_interval=60))
    try:
        await asyncio.sleep(0.3)  # polled once, LISTENing, asleep for 60 s
        now = utcnow()
        with sync_engine.begin() as connection:  # a plain connection: no session events
            connection.execute(
                sa.insert(sagas).values(
                    id="30000000-0000-4000-8000-000000000001",
                    name=ThreeStepSaga.saga_name,
                    status="pending",
                    context={"n": 1},
                    created_at=now,
                    updated_at=now,
                )
            )
            connection.execute(sa.text("SELECT pg_notify('sagaz_sagas', current_schema())"))
        await wait_for(lambda: all_done(sync_engine, 1), seconds=15)
    finally:
        await running.stop()
        await async_engine.dispose()
        sync_engine.dispose()


async def test_a_saga_bound_to_a_config_runs_with_its_options(
    engines: tuple[AsyncEngine, sa.Engine],
) -> None:
    """An imperative saga bound to a SagaConfig with max_retries=2 completes through a
    step that fails twice, under a worker whose own options allow no retry; the same
    saga unbound is compensated."""
    async_engine, sync_engine = engines
    failures: dict[int, int] = {}

    def flaky(ctx: Any) -> None:
        failures[ctx["n"]] = failures.get(ctx["n"], 0) + 1
        if failures[ctx["n"]] <= 2:
            raise RuntimeError("flaky")

    def undo(ctx: Any) -> None:
        return None

    with registry.isolated():
        bound = Saga("worker-bound-saga", config=SagaConfig(max_retries=2, retry_backoff=0))
        bound.add_step("flaky", flaky, undo).register()
        unbound = Saga("worker-unbound-saga").add_step("flaky", flaky, undo).register()
        [bound_id] = await start(async_engine, bound, [{"n": 1}])
        [unbound_id] = await start(async_engine, unbound, [{"n": 2}])
        running = RunningWorker(make_worker(engines))
        try:
            await wait_for(lambda: all_done(sync_engine, 2))
        finally:
            await running.stop()
    store = SagaStore(sync_engine)
    assert (bound_snapshot := store.get(bound_id)) is not None
    assert (unbound_snapshot := store.get(unbound_id)) is not None
    assert bound_snapshot.status is SagaStatus.COMPLETED
    assert bound_snapshot.steps["flaky"].attempts == 3
    assert unbound_snapshot.status is SagaStatus.COMPENSATED
