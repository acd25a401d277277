"""sagaz's Prometheus metrics after a real run on PostgreSQL: a completed, a compensated
and a failed saga, a published and a dead-lettered event, a failed claim - each checked
on a registry of the test's own."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from sagaz import MissingExtraError, Saga, SagaConfig, SagaStatus
from sagaz.context import SagaContextManager
from sagaz.metrics import SagazMetrics, metrics_for
from sagaz.observability import PrometheusListener
from sagaz.runtime import SagaRuntime
from sagaz.worker import SagaWorker
from tests.conftest import DatabaseUrls
from tests.relay.relay_helpers import add_events, eventually, failing, status_counts


async def fine(ctx: Mapping[str, Any]) -> dict[str, Any]:
    return {}


async def boom(ctx: Mapping[str, Any]) -> None:
    raise RuntimeError("boom")


def sagas() -> dict[str, Saga]:
    def saga(name: str) -> Saga:
        return Saga(name=name)

    return {
        "completed": saga("m-ok").add_step("a", fine).add_step("b", fine),
        "compensated": saga("m-comp").add_step("a", fine, fine).add_step("b", boom),
        "failed": saga("m-fail").add_step("a", fine, boom).add_step("b", boom),
    }


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_metrics_after_a_run_with_every_outcome(
    pg: DatabaseUrls, caplog: pytest.LogCaptureFixture
) -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    config = SagaConfig(database_url=pg.url, max_retries=0, compensation_retries=0)
    runtime = SagaRuntime(
        config,
        run_relay=True,
        broker=failing(lambda message: message.payload == {"poison": True}),
        relay_options={"max_attempts": 1, "poll_interval": 0.05, "listen": False},
        metrics=metrics,
    )
    engine = pg.sync_engine()
    await runtime.start()
    try:
        assert runtime.worker is not None
        outcomes = {}
        with caplog.at_level(logging.INFO, logger="sagaz"):
            for expected, saga in sagas().items():
                with SagaContextManager.scope(f"corr-{expected}"):
                    result = await runtime.worker.run_here(saga.definition, {})
                outcomes[expected] = result.status
            with SagaContextManager.scope("corr-events"):
                good, poison = add_events(
                    engine, [("t", {"fine": True}, None), ("t", {"poison": True}, None)]
                )

            async def settled() -> bool:
                return await status_counts(config.engine) == {"published": 1, "dead": 1}

            await eventually(settled)
    finally:
        await runtime.stop()
    assert outcomes == {
        "completed": SagaStatus.COMPLETED,
        "compensated": SagaStatus.COMPENSATED,
        "failed": SagaStatus.FAILED,
    }
    for status, name in (("completed", "m-ok"), ("compensated", "m-comp"), ("failed", "m-fail")):
        assert value(registry, "sagaz_sagas_started_total", saga=name) == 1
        assert value(registry, "sagaz_sagas_finished_total", saga=name, status=status) == 1
        other = "failed" if status != "failed" else "completed"
        assert value(registry, "sagaz_sagas_finished_total", saga=name, status=other) == 0

    def steps(name: str, saga: str, step: str, outcome: str) -> float:
        return value(registry, f"{name}_count", saga=saga, step=step, outcome=outcome)

    assert steps("sagaz_step_duration_seconds", "m-ok", "a", "completed") == 1
    assert steps("sagaz_step_duration_seconds", "m-ok", "b", "completed") == 1
    assert steps("sagaz_step_duration_seconds", "m-comp", "b", "failed") == 1
    assert steps("sagaz_compensation_duration_seconds", "m-comp", "a", "completed") == 1
    assert steps("sagaz_compensation_duration_seconds", "m-fail", "a", "failed") == 1
    assert steps("sagaz_compensation_duration_seconds", "m-ok", "a", "completed") == 0
    assert value(registry, "sagaz_transitions_total", saga="m-ok", kind="step_completed") == 2
    assert value(registry, "sagaz_outbox_publish_latency_seconds_count") == 1
    assert value(registry, "sagaz_outbox_published_total") == 1
    assert value(registry, "sagaz_outbox_dead_lettered_total") == 1
    assert value(registry, "sagaz_worker_lease_losses_total") == 0

    # The outbox gauges, read at scrape time from the database watched.
    metrics.outbox.watch(engine)
    assert registry.get_sample_value("sagaz_outbox_dead") == 1
    assert registry.get_sample_value("sagaz_outbox_pending") == 0
    assert registry.get_sample_value("sagaz_outbox_oldest_pending_age_seconds") == 0
    add_events(engine, [("t", {"late": True}, None)])
    assert registry.get_sample_value("sagaz_outbox_pending") == 1
    assert (registry.get_sample_value("sagaz_outbox_oldest_pending_age_seconds") or 0) >= 0
    metrics.outbox.unwatch(engine)
    assert registry.get_sample_value("sagaz_outbox_pending") is None
    engine.dispose()

    # The dead-lettered event's record carries its fields.
    (dead,) = [r for r in caplog.records if "dead-lettered event" in r.getMessage()]
    assert (dead.levelno, dead.name) == (logging.ERROR, "sagaz.outbox.relay")
    assert (dead.event_id, dead.correlation_id) == (poison, "corr-events")  # type: ignore[attr-defined]
    assert good != poison


async def test_a_failed_claim_is_counted(pg_empty: DatabaseUrls) -> None:
    registry = CollectorRegistry()
    engine = pg_empty.async_engine()
    worker = SagaWorker(engine, metrics=metrics_for(registry), listen=False, poll_interval=0.05)
    try:
        with pytest.raises(Exception, match="sagaz_sagas"):  # no tables: fatal, raised
            await worker.run_until_stopped()
    finally:
        await engine.dispose()
    assert value(registry, "sagaz_worker_claim_failures_total") == 1


def test_one_set_of_metrics_per_registry() -> None:
    registry = CollectorRegistry()
    assert metrics_for(registry) is metrics_for(registry)
    assert PrometheusListener(registry).metrics is metrics_for(registry)
    assert metrics_for(CollectorRegistry()) is not metrics_for(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        SagazMetrics(registry)


def test_an_unreadable_outbox_yields_no_gauge(sqlite_empty: DatabaseUrls) -> None:
    registry = CollectorRegistry()
    metrics = metrics_for(registry)
    engine = sqlite_empty.sync_engine()  # no tables
    metrics.outbox.watch(engine)
    assert registry.get_sample_value("sagaz_outbox_pending") is None
    engine.dispose()


def test_metrics_need_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(MissingExtraError) as caught:
        metrics_for(object())
    assert caught.value.extra == "prometheus"


def test_prometheus_client_is_imported_only_when_metrics_are_on() -> None:
    script = (
        "import sys, sagaz, sagaz.metrics, sagaz.runtime, sagaz.cli.worker\n"
        "assert 'prometheus_client' not in sys.modules, 'imported at import'\n"
        "sagaz.metrics.metrics_for()\n"
        "assert 'prometheus_client' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True)


def test_a_dropped_registry_is_not_kept_alive() -> None:
    import gc
    import weakref

    registry = CollectorRegistry()
    metrics_for(registry)
    dropped = weakref.ref(registry)
    del registry
    gc.collect()
    assert dropped() is None
