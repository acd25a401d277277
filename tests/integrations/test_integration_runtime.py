"""SagaRuntime (sagaz.runtime) and BackgroundSagaRunner (sagaz.background), framework-free:
lifecycle, start failures, finding the runtime, and runs that lose their lease, hit an
unknown saga or are stopped by shutdown - on real PostgreSQL."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession

from sagaz import ConfigurationError, Saga, SagaConfig, start_saga
from sagaz.integrations._base import SagaRuntime, find_runtime
from sagaz.journal import SagaSnapshot, utcnow
from sagaz.metrics import metrics_for
from sagaz.registry import registry
from sagaz.store.schema import sagas
from sagaz.worker import SagaWorker, claims
from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import (
    IntegrationOrderSaga,
    saga_row,
    settled_pg_connections,
    status_of,
    step_log,
    wait_until,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
async def runtime(config: SagaConfig) -> AsyncIterator[SagaRuntime]:
    runtime = await SagaRuntime(config, shutdown_grace_seconds=0.1).start()
    yield runtime
    await runtime.stop()


async def record(runtime: SagaRuntime, context: dict[str, object]) -> str:
    async with runtime.session() as session:
        saga_id = start_saga(session, IntegrationOrderSaga, context)
        await session.commit()
    return saga_id


# -- lifecycle ---------------------------------------------------------------------------


async def test_start_and_stop_are_idempotent_and_close_what_they_opened(
    config: SagaConfig, admin: sa.Engine, app_db: DatabaseUrls
) -> None:
    runtime = SagaRuntime(config)
    assert await runtime.start() is await runtime.start()
    assert config.initialized
    await record(runtime, {"n": 1})
    await runtime.stop()
    await runtime.stop()
    assert not config.initialized
    assert settled_pg_connections(admin, str(app_db.application_name), 0) == 0


async def test_a_config_initialised_elsewhere_is_left_open(config: SagaConfig) -> None:
    await config.initialize()
    try:
        runtime = await SagaRuntime(config).start()
        await runtime.stop()
        assert config.initialized
    finally:
        await config.close()


async def test_a_failed_start_undoes_itself(
    config: SagaConfig, admin: sa.Engine, app_db: DatabaseUrls
) -> None:
    config.broker_url = "bogus://nowhere"
    runtime = SagaRuntime(config, run_worker=True, run_relay=True)
    with pytest.raises(ConfigurationError, match="bogus"):
        await runtime.start()
    assert not runtime.started
    assert runtime.worker is None
    assert not config.initialized
    assert settled_pg_connections(admin, str(app_db.application_name), 0) == 0
    assert [t for t in asyncio.all_tasks() if t is not asyncio.current_task()] == []


async def test_without_a_database_sessions_and_background_runs_are_refused() -> None:
    runtime = SagaRuntime(SagaConfig())
    with pytest.raises(ConfigurationError, match="needs the sagaz runtime to be started"):
        runtime.session()
    await runtime.start()
    try:
        with pytest.raises(ConfigurationError, match="database_url"):
            runtime.session()
        with pytest.raises(ConfigurationError, match="database_url"):
            runtime.sync_session()
        with pytest.raises(ConfigurationError, match="database_url"):
            _ = runtime.runner
        assert runtime.engines() == []
    finally:
        await runtime.stop()


async def test_an_in_process_worker_that_dies_is_logged_loudly(
    config: SagaConfig, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def crash(self: SagaWorker) -> None:
        raise RuntimeError("worker crashed")

    monkeypatch.setattr(SagaWorker, "run_until_stopped", crash)
    runtime = await SagaRuntime(config, run_worker=True).start()
    await asyncio.sleep(0.05)
    await runtime.stop()
    assert "sagaz:in-process-worker stopped with an error" in caplog.text
    assert "worker crashed" in caplog.text


# -- finding the runtime -----------------------------------------------------------------


async def test_find_runtime(app_db: DatabaseUrls) -> None:
    with pytest.raises(ConfigurationError, match="not running in this process"):
        find_runtime()
    first_config = SagaConfig(database_url=app_db.url)
    second_config = SagaConfig(database_url=app_db.url)
    first = await SagaRuntime(first_config).start()
    try:
        assert find_runtime() is first
        assert find_runtime(config=first_config) is first
        with pytest.raises(ConfigurationError, match="not started"):
            find_runtime(config=second_config)
        second = await SagaRuntime(second_config).start()
        try:
            with pytest.raises(ConfigurationError, match="2 sagaz runtimes"):
                find_runtime()
            assert find_runtime(config=second_config) is second
            async with second.session() as session:
                assert find_runtime(session=session) is second
            with first.sync_session() as sync_session:
                assert find_runtime(session=sync_session) is first
        finally:
            await second.stop()
    finally:
        await first.stop()


# -- background runs -----------------------------------------------------------------------


async def test_a_saga_that_is_not_runnable_is_not_run(
    runtime: SagaRuntime, sync_db: sa.Engine
) -> None:
    assert await runtime.runner.run("00000000-0000-0000-0000-000000000000") is None
    saga_id = await record(runtime, {"n": 1})
    result = await runtime.runner.run(saga_id)
    assert result is not None
    assert result.status.value == "completed"
    assert await runtime.runner.run(saga_id) is None  # finished
    assert step_log.calls == {"1": 1}


async def test_a_run_that_loses_its_lease_stops_without_writing_again(
    app_db: DatabaseUrls, sync_db: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    config = SagaConfig(database_url=app_db.url, lease_seconds=0.3)
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    runtime = await SagaRuntime(config, metrics=metrics).start()
    try:
        saga_id = await record(runtime, {"n": 1, "sleep_once": 30})
        run = asyncio.create_task(runtime.runner.run(saga_id))
        await wait_until(lambda: step_log.running.get("1") == 1)

        def take_over() -> SagaSnapshot | None:
            """Another worker takes the saga over (as if this process had stalled)."""
            with sync_db.begin() as connection:
                connection.execute(
                    sa.update(sagas)
                    .where(sagas.c.id == saga_id)
                    .values(lease_expires_at=utcnow() - timedelta(seconds=1))
                )
                return claims.claim_saga(
                    connection, saga_id, owner="thief", lease_seconds=30, now=utcnow()
                )

        # In a thread: blocking the event loop here would deadlock whenever the run's own
        # transaction (a lease renewal, a journal write) holds the saga row's lock, since
        # that transaction needs the loop to commit.
        stolen = await asyncio.to_thread(take_over)
        assert stolen is not None
        assert await asyncio.wait_for(run, 5) is None
        row = saga_row(sync_db, saga_id)
        assert row is not None
        assert (row.lease_owner, row.status) == ("thief", "running")
        assert "was taken over" in caplog.text
        lost = [r for r in caplog.records if "was taken over" in r.getMessage()]
        assert {getattr(r, "saga_id", None) for r in lost} == {saga_id}
        assert registry.get_sample_value("sagaz_worker_lease_losses_total") == 1
    finally:
        await runtime.stop()


async def test_an_unexpected_failure_releases_the_saga_for_a_worker(
    runtime: SagaRuntime, sync_db: sa.Engine, caplog: pytest.LogCaptureFixture
) -> None:
    with registry.isolated():
        vanishing = Saga(name="integration-vanishing").add_step("a", lambda ctx: None)
        vanishing.register()
        async with runtime.session() as session:
            saga_id = start_saga(session, vanishing, {})
            await session.commit()
        registry.unregister("integration-vanishing")
        with caplog.at_level(logging.ERROR, logger="sagaz.worker"):
            assert await runtime.runner.run(saga_id) is None
    row = saga_row(sync_db, saga_id)
    assert row is not None
    assert (row.status, row.lease_owner, row.attempts) == ("pending", None, 1)
    assert "vanished from the registry; releasing it" in caplog.text


async def test_submit_works_from_any_thread_and_not_after_close(
    config: SagaConfig, sync_db: sa.Engine
) -> None:
    runtime = await SagaRuntime(config).start()
    first = await record(runtime, {"n": 1})
    threading.Thread(target=runtime.runner.submit, args=(first,)).start()
    await wait_until(lambda: status_of(sync_db, first) == "completed")
    runner = runtime.runner
    second = await record(runtime, {"n": 2})
    await runtime.stop()
    runner.submit(second)  # after close: left for a worker
    await asyncio.sleep(0.05)
    assert status_of(sync_db, second) == "pending"
    assert runner.in_flight == 0


async def test_stop_releases_running_sagas_after_the_grace_period(
    runtime: SagaRuntime, sync_db: sa.Engine
) -> None:
    saga_id = await record(runtime, {"n": 1, "sleep_once": 30})
    runtime.runner.submit(saga_id)
    await wait_until(lambda: step_log.running.get("1") == 1)
    assert runtime.runner.in_flight == 1
    await runtime.stop()
    row = saga_row(sync_db, saga_id)
    assert row is not None
    assert (row.status, row.lease_owner) == ("running", None)


async def test_a_rolled_back_recording_never_runs(runtime: SagaRuntime, sync_db: sa.Engine) -> None:
    async with runtime.session() as session:
        saga_id, run = runtime.runner.record_in(session, IntegrationOrderSaga, {"n": 1})
        async with session.begin_nested():
            nested_id, _nested_run = runtime.runner.record_in(
                session, IntegrationOrderSaga, {"n": 2}
            )
        await session.rollback()
    run.release()
    await asyncio.sleep(0.05)
    assert runtime.runner.in_flight == 0
    assert status_of(sync_db, saga_id) is None
    assert status_of(sync_db, nested_id) is None
    async with AsyncSession(runtime.config.engine) as session:
        saga_id, run = runtime.runner.record_in(session, IntegrationOrderSaga, {"n": 3})
    run.release()  # the session closed without committing
    await asyncio.sleep(0.05)
    assert runtime.runner.in_flight == 0


async def test_a_saga_bound_to_a_config_runs_in_the_background_with_its_options(
    runtime: SagaRuntime,
) -> None:
    """The runner's config allows no retry; the saga's own config allows two."""
    attempts: list[int] = []

    def flaky(ctx: object) -> None:
        attempts.append(1)
        if len(attempts) <= 2:
            raise RuntimeError("flaky")

    with registry.isolated():
        bound = Saga("runtime-bound-saga", config=SagaConfig(max_retries=2, retry_backoff=0))
        bound.add_step("flaky", flaky).register()
        async with runtime.session() as session:
            saga_id = start_saga(session, bound, {"n": 1})
            await session.commit()
        result = await runtime.runner.run(saga_id)
    assert result is not None
    assert result.status.value == "completed"
    assert len(attempts) == 3
