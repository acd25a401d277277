"""Transition listeners for logs, Prometheus metrics and OpenTelemetry span events.

Each is opt-in through `SagaConfig` switches; the Prometheus and OpenTelemetry ones
import their package only when switched on and name the extra to install otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

from sagaz._util import requires_extra
from sagaz.journal import Transition, TransitionListener
from sagaz.logging import fields

transition_log = logging.getLogger("sagaz.transitions")


def log_transition(transition: Transition) -> None:
    """Log one transition at INFO (failures at WARNING) with its saga and step."""
    level = logging.WARNING if transition.error else logging.INFO
    transition_log.log(
        level,
        "saga %s %s %s%s%s",
        transition.saga_name,
        transition.saga_id,
        transition.kind.value,
        f" step={transition.step}" if transition.step else "",
        f" error={transition.error}" if transition.error else "",
        extra=fields(
            saga_id=transition.saga_id,
            saga_name=transition.saga_name,
            step=transition.step,
            attempt=transition.attempt or None,
            correlation_id=transition.correlation_id,
        ),
    )


class PrometheusListener:
    """Feeds transitions to sagaz's Prometheus metrics (`sagaz.metrics`) on `registry`
    (prometheus_client's default registry when None): `sagaz_transitions_total`, the saga
    counters and the step and compensation duration histograms. Any number of listeners
    share the one set of metrics of a registry."""

    def __init__(self, registry: Any = None) -> None:
        from sagaz.metrics import metrics_for  # MissingExtraError without the extra

        self.metrics = metrics_for(registry)

    def __call__(self, transition: Transition) -> None:
        self.metrics.observe_transition(transition)


class TracingListener:
    """Adds each transition as an event on the current OpenTelemetry span."""

    def __init__(self) -> None:
        with requires_extra("otel", "opentelemetry-api", "tracing=True"):
            from opentelemetry import trace
        self._trace = trace

    def __call__(self, transition: Transition) -> None:
        attributes = {"sagaz.saga_id": transition.saga_id, "sagaz.saga": transition.saga_name}
        if transition.step:
            attributes["sagaz.step"] = transition.step
        if transition.error:
            attributes["sagaz.error"] = transition.error
        self._trace.get_current_span().add_event(f"sagaz.{transition.kind.value}", attributes)


def build_listeners(
    *, log_transitions: bool, metrics: bool, tracing: bool
) -> list[TransitionListener]:
    listeners: list[TransitionListener] = []
    if log_transitions:
        listeners.append(log_transition)
    if metrics:
        listeners.append(PrometheusListener())
    if tracing:
        listeners.append(TracingListener())
    return listeners
