"""The metrics page every framework serves (`sagaz.metrics`), framework-free."""

from __future__ import annotations

from typing import Any

from sagaz._util import requires_extra


def render_metrics(registry: Any = None) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry` (prometheus_client's default registry,
    where sagaz's metrics are, when None) and its content type. It reads the outbox
    gauges (a short, bounded query): call it off the event loop. MissingExtraError
    without the ``prometheus`` extra."""
    with requires_extra("prometheus", "prometheus_client", "The sagaz metrics page"):
        import prometheus_client
    chosen = prometheus_client.REGISTRY if registry is None else registry
    return prometheus_client.generate_latest(chosen), prometheus_client.CONTENT_TYPE_LATEST
