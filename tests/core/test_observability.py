"""Observability listeners: logging, Prometheus metrics, OpenTelemetry span events."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

import sagaz.observability
from sagaz import MissingExtraError, Saga, SagaConfig, SagaStatus, TransitionKind
from sagaz.observability import (
    PrometheusListener,
    TracingListener,
    build_listeners,
    log_transition,
)


async def boom(ctx: Mapping[str, Any]) -> None:
    raise RuntimeError("boom")


async def test_log_transitions(caplog: pytest.LogCaptureFixture) -> None:
    config = SagaConfig(log_transitions=True)
    await config.initialize()
    saga = Saga(name="obs-log", config=config).add_step("a", lambda ctx: None).add_step("b", boom)
    try:
        with caplog.at_level(logging.INFO, logger="sagaz.transitions"):
            result = await saga.run(saga_id="log-1")
    finally:
        await config.close()

    records = [r for r in caplog.records if r.name == "sagaz.transitions"]
    messages = [r.getMessage() for r in records]
    assert messages[0] == "saga obs-log log-1 saga_started"
    assert "saga obs-log log-1 step_completed step=a" in messages
    failed = next(r for r in records if "step_failed" in r.getMessage())
    assert failed.levelno == logging.WARNING
    assert failed.getMessage() == "saga obs-log log-1 step_failed step=b error=RuntimeError: boom"
    assert messages[-1].startswith("saga obs-log log-1 saga_finished")
    assert len(records) == 8
    assert result.status is SagaStatus.COMPENSATED


def test_no_switch_no_listener() -> None:
    assert build_listeners(log_transitions=False, metrics=False, tracing=False) == []
    assert build_listeners(log_transitions=True, metrics=False, tracing=False) == [log_transition]


async def test_prometheus_listener_counts_transitions() -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    name = f"obs-metrics-{uuid.uuid4().hex[:8]}"
    config = SagaConfig(metrics=True)
    await config.initialize()
    try:
        assert any(isinstance(listener, PrometheusListener) for listener in config.listeners)
        saga = Saga(name=name, config=config).add_step("a", lambda ctx: None)
        await saga.run()
        await saga.run()
    finally:
        await config.close()

    def sample(kind: TransitionKind) -> float | None:
        value: float | None = prometheus_client.REGISTRY.get_sample_value(
            "sagaz_transitions_total", {"saga": name, "kind": kind.value}
        )
        return value

    assert sample(TransitionKind.SAGA_STARTED) == 2.0
    assert sample(TransitionKind.STEP_COMPLETED) == 2.0
    assert sample(TransitionKind.STEP_FAILED) is None
    PrometheusListener()  # a second listener shares the one counter (no duplicate metric)


class FakeSpan:
    def __init__(self) -> None:
        self.events: list[tuple[str, dict[str, str]]] = []

    def add_event(self, name: str, attributes: dict[str, str]) -> None:
        self.events.append((name, attributes))


async def test_tracing_listener_adds_span_events() -> None:
    pytest.importorskip("opentelemetry")
    span = FakeSpan()
    listener = TracingListener()

    class FakeTrace:
        @staticmethod
        def get_current_span() -> FakeSpan:
            return span

    listener._trace = FakeTrace
    saga = Saga(name="obs-trace").add_step("a", lambda ctx: None).add_step("b", boom)
    await saga.run(saga_id="t-1", listeners=[listener])

    names = [name for name, _ in span.events]
    assert names[0] == "sagaz.saga_started"
    assert "sagaz.step_failed" in names
    assert names[-1] == "sagaz.saga_finished"
    failed = dict(span.events)["sagaz.step_failed"]
    assert failed == {
        "sagaz.saga_id": "t-1",
        "sagaz.saga": "obs-trace",
        "sagaz.step": "b",
        "sagaz.error": "RuntimeError: boom",
    }
    assert dict(span.events)["sagaz.saga_started"] == {
        "sagaz.saga_id": "t-1",
        "sagaz.saga": "obs-trace",
    }


async def test_tracing_listener_with_the_real_api_is_harmless() -> None:
    pytest.importorskip("opentelemetry")
    config = SagaConfig(tracing=True)
    await config.initialize()
    try:
        result = await Saga(name="obs-otel", config=config).add_step("a", lambda ctx: None).run()
    finally:
        await config.close()
    assert result.status is SagaStatus.COMPLETED


@pytest.mark.parametrize(
    ("switch", "module", "extra"),
    [("metrics", "prometheus_client", "prometheus"), ("tracing", "opentelemetry", "otel")],
)
async def test_missing_extra_is_named(
    monkeypatch: pytest.MonkeyPatch, switch: str, module: str, extra: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    config = SagaConfig(**{switch: True})
    with pytest.raises(MissingExtraError) as caught:
        await config.initialize()
    assert caught.value.extra == extra
    assert f"pip install 'sagaz[{extra}]'" in str(caught.value)
    assert f"{switch}=True" in str(caught.value)
    assert isinstance(caught.value, ImportError)
    assert not config.initialized


def test_observability_module_imports_no_extra() -> None:
    source = sagaz.observability.__file__
    assert source is not None
    with open(source) as handle:
        top_level = [line for line in handle if line.startswith(("import ", "from "))]
    assert not any("prometheus" in line or "opentelemetry" in line for line in top_level)
