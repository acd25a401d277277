"""sagaz's Prometheus metrics: every metric is defined here, once (docs/operations.md
lists them with their labels and alert examples).

`SagazMetrics` holds the metrics of one `prometheus_client` registry; `metrics_for` returns
the one of a registry (the default registry unless told), so any number of configs,
runtimes and tests share them without a duplicate-registration error - a test isolates
its values with a registry of its own. `prometheus_client` (the ``prometheus`` extra) is
imported only when a `SagazMetrics` is built; `MissingExtraError` names the extra
otherwise.

The worker and the relay report through hooks (`MetricsHooks` methods): `NO_METRICS`,
what they hold when metrics are off, does nothing. Saga and step metrics come from the
transitions (`SagazMetrics.observe_transition`, a transition listener); the outbox gauges
are read at scrape time, with a short timeout, by the index-served counts of
`sagaz.outbox.maintenance.read_health` - never a scan of the table.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sagaz._util import requires_extra, utcnow
from sagaz.state import Transition, TransitionKind

if TYPE_CHECKING:
    import sqlalchemy as sa

    from sagaz.outbox.claims import ClaimedEvent
    from sagaz.outbox.maintenance import OutboxHealth

__all__ = ["NO_METRICS", "MetricsHooks", "OutboxCollector", "SagazMetrics", "metrics_for"]

log = logging.getLogger("sagaz.metrics")

#: Seconds: from a millisecond (a step, an in-process publish) to ten minutes.
DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
    600,
)

#: Step starts remembered until their end is seen (runs cut short never report an end).
MAX_OPEN_STEPS = 100_000

_FINISHED = {  # SAGA_FINISHED's status -> the `status` label
    "completed": "completed",
    "compensated": "compensated",
    "failed": "failed",
}
_STEP_ENDS = {
    TransitionKind.STEP_COMPLETED: ("step", "completed"),
    TransitionKind.STEP_FAILED: ("step", "failed"),
    TransitionKind.STEP_ATTEMPT_FAILED: ("step", "retried"),
    TransitionKind.COMPENSATION_COMPLETED: ("compensation", "completed"),
    TransitionKind.COMPENSATION_FAILED: ("compensation", "failed"),
}


class MetricsHooks:
    """What the worker and the relay report. These do nothing: `NO_METRICS` is what they
    hold while metrics are off; `SagazMetrics` records."""

    def observe_transition(self, transition: Transition) -> None:
        """A saga or step transition happened."""

    def published(
        self, events: Sequence[ClaimedEvent], results: Sequence[BaseException | None]
    ) -> None:
        """The broker answered for `events` (None: confirmed)."""

    def dead_lettered(self, count: int) -> None:
        """`count` events were dead-lettered."""

    def lease_lost(self) -> None:
        """A running saga's lease was taken over by another worker."""

    def claim_failed(self) -> None:
        """A worker's claim of sagas failed (a database error)."""


NO_METRICS = MetricsHooks()
"""What the worker and the relay report to while metrics are off: nothing is recorded."""


class SagazMetrics(MetricsHooks):
    """sagaz's metrics on one registry (see the module docstring). Build it through
    `metrics_for`: a second one on the same registry raises ValueError (duplicate)."""

    def __init__(self, registry: Any = None) -> None:
        with requires_extra("prometheus", "prometheus_client", "metrics=True"):
            import prometheus_client as prom
        reg = prom.REGISTRY if registry is None else registry
        # Weak: `metrics_for` keeps one SagazMetrics per registry for as long as it lives.
        self._registry = weakref.ref(reg)

        def counter(name: str, documentation: str, *labels: str) -> Any:
            return prom.Counter(name, documentation, labels, registry=reg)

        def histogram(name: str, documentation: str, *labels: str) -> Any:
            return prom.Histogram(
                name, documentation, labels, buckets=DURATION_BUCKETS, registry=reg
            )

        self.transitions = counter(
            "sagaz_transitions", "Saga and step transitions recorded by sagaz", "saga", "kind"
        )
        self.sagas_started = counter("sagaz_sagas_started", "Sagas that started running", "saga")
        self.sagas_finished = counter(
            "sagaz_sagas_finished",
            "Sagas that finished, by final status (completed, compensated, failed)",
            "saga",
            "status",
        )
        step_labels = ("saga", "step", "outcome")
        self.step_duration = histogram(
            "sagaz_step_duration_seconds",
            "Duration of a step attempt, by outcome (completed, failed, retried)",
            *step_labels,
        )
        self.compensation_duration = histogram(
            "sagaz_compensation_duration_seconds",
            "Duration of a step's compensation, by outcome (completed, failed)",
            *step_labels,
        )
        self.publish_latency = histogram(
            "sagaz_outbox_publish_latency_seconds",
            "From an outbox event's commit (created_at) to the broker's confirmation",
        )
        self.events_published = counter(
            "sagaz_outbox_published", "Outbox events the broker confirmed"
        )
        self.events_dead_lettered = counter(
            "sagaz_outbox_dead_lettered", "Outbox events dead-lettered by the relay"
        )
        self.lease_losses = counter(
            "sagaz_worker_lease_losses",
            "Saga runs stopped because another worker took their lease over",
        )
        self.claim_failures = counter(
            "sagaz_worker_claim_failures", "Failed claims of sagas (database errors)"
        )
        self.outbox = OutboxCollector()
        reg.register(self.outbox)
        self._open: OrderedDict[tuple[str, str, str], datetime] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def registry(self) -> Any:
        """The `prometheus_client` registry these metrics are on."""
        return self._registry()

    # -- transitions ---------------------------------------------------------------------

    def observe_transition(self, transition: Transition) -> None:
        """Count `transition` and time the step (or compensation) it ends. A transition
        listener: put it in `SagaConfig.extra_listeners` (`metrics=True` does it)."""
        kind, saga = transition.kind, transition.saga_name
        self.transitions.labels(saga=saga, kind=kind.value).inc()
        if kind is TransitionKind.SAGA_STARTED:
            self.sagas_started.labels(saga=saga).inc()
        elif kind is TransitionKind.SAGA_FINISHED and transition.status is not None:
            status = _FINISHED.get(transition.status.value)
            if status is not None:
                self.sagas_finished.labels(saga=saga, status=status).inc()
        elif transition.step is not None:
            self._time_step(transition)

    def _time_step(self, transition: Transition) -> None:
        kind, step = transition.kind, transition.step or ""
        if kind in (TransitionKind.STEP_STARTED, TransitionKind.COMPENSATION_STARTED):
            phase = "step" if kind is TransitionKind.STEP_STARTED else "compensation"
            with self._lock:
                self._open[transition.saga_id, step, phase] = transition.at
                if len(self._open) > MAX_OPEN_STEPS:
                    self._open.popitem(last=False)
            return
        end = _STEP_ENDS.get(kind)
        if end is None:
            return
        phase, outcome = end
        with self._lock:
            started = self._open.pop((transition.saga_id, step, phase), None)
        if started is None:  # started in another run (resumed) or by another worker
            return
        histogram = self.step_duration if phase == "step" else self.compensation_duration
        seconds = max(0.0, (transition.at - started).total_seconds())
        histogram.labels(saga=transition.saga_name, step=step, outcome=outcome).observe(seconds)

    # -- relay and worker hooks ----------------------------------------------------------

    def published(
        self, events: Sequence[ClaimedEvent], results: Sequence[BaseException | None]
    ) -> None:
        now = utcnow()
        confirmed = 0
        for event, error in zip(events, results, strict=False):
            if error is not None:
                continue
            confirmed += 1
            created = event.message.created_at
            if created is not None:
                self.publish_latency.observe(max(0.0, (now - created).total_seconds()))
        if confirmed:
            self.events_published.inc(confirmed)

    def dead_lettered(self, count: int) -> None:
        if count:
            self.events_dead_lettered.inc(count)

    def lease_lost(self) -> None:
        self.lease_losses.inc()

    def claim_failed(self) -> None:
        self.claim_failures.inc()


class OutboxCollector:
    """The outbox gauges, read at scrape time from the watched database (one at a time:
    the last one `watch`ed): pending events, dead-lettered events, the age of the oldest
    pending one. A read that fails or takes longer than `timeout` seconds yields no
    sample (and is logged); a read still running is not started again."""

    def __init__(self, timeout: float = 2.0) -> None:
        self.timeout = timeout
        self._engine: sa.Engine | None = None
        self._lock = threading.Lock()
        self._reading: _Read | None = None

    def watch(self, engine: sa.Engine) -> None:
        """Read the gauges from `engine` (a sync engine on sagaz's tables) from now on."""
        self._engine = engine

    def unwatch(self, engine: sa.Engine) -> None:
        """Stop reading from `engine` (nothing if another one is watched now)."""
        if self._engine is engine:
            self._engine = None

    def describe(self) -> Iterable[Any]:
        return list(self._families())

    def collect(self) -> Iterable[Any]:
        engine = self._engine
        health = None if engine is None else self._read(engine)
        families = self._families()
        if health is not None:
            pending, dead, oldest = families
            pending.add_metric([], health.pending)
            dead.add_metric([], health.dead)
            oldest.add_metric([], health.oldest_pending_age or 0.0)
        return families

    @staticmethod
    def _families() -> list[Any]:
        from prometheus_client.core import GaugeMetricFamily

        return [
            GaugeMetricFamily("sagaz_outbox_pending", "Outbox events not yet published"),
            GaugeMetricFamily("sagaz_outbox_dead", "Dead-lettered outbox events (sagaz dlq)"),
            GaugeMetricFamily(
                "sagaz_outbox_oldest_pending_age_seconds",
                "Age of the oldest unpublished outbox event (0 when none)",
            ),
        ]

    def _read(self, engine: sa.Engine) -> OutboxHealth | None:
        with self._lock:
            reading = self._reading
            if reading is None or reading.done.is_set():
                reading = self._reading = _Read(engine, self.timeout)
        if not reading.done.wait(self.timeout):
            log.warning("sagaz metrics: reading the outbox counts took over %gs", self.timeout)
            return None
        return reading.health


class _Read:
    """One read of the outbox counts in a daemon thread: a scrape waits for it at most
    its timeout, and a database that hangs keeps no scrape (nor the process's exit)."""

    def __init__(self, engine: sa.Engine, timeout: float) -> None:
        self.health: OutboxHealth | None = None
        self.done = threading.Event()
        thread = threading.Thread(
            target=self._run, args=(engine, timeout), name="sagaz:outbox-metrics", daemon=True
        )
        thread.start()

    def _run(self, engine: sa.Engine, timeout: float) -> None:
        import sqlalchemy as sa

        from sagaz.outbox.maintenance import read_health
        from sagaz.store.failures import log_failure

        try:
            with engine.connect() as connection:
                if connection.dialect.name == "postgresql":  # bounded: a plain integer
                    milliseconds = max(1, int(timeout * 1000))
                    connection.execute(sa.text(f"SET LOCAL statement_timeout = {milliseconds}"))
                self.health = read_health(connection)
                connection.rollback()
        except Exception as error:
            log_failure(log, error, "sagaz metrics: reading the outbox counts failed")
        finally:
            self.done.set()


_by_registry: weakref.WeakKeyDictionary[Any, SagazMetrics] = weakref.WeakKeyDictionary()
_by_registry_lock = threading.Lock()


def metrics_for(registry: Any = None) -> SagazMetrics:
    """The `SagazMetrics` of `registry` (prometheus_client's default registry when None),
    built on first use. Raises MissingExtraError without the ``prometheus`` extra."""
    with requires_extra("prometheus", "prometheus_client", "metrics=True"):
        import prometheus_client
    key = prometheus_client.REGISTRY if registry is None else registry
    with _by_registry_lock:
        metrics = _by_registry.get(key)
        if metrics is None:
            metrics = _by_registry[key] = SagazMetrics(key)
        return metrics
