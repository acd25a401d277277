"""W3C trace context end to end: from the request that starts a saga or adds an event, to
the worker's run, the relay's publish and the consumer's processing.

* `start_saga` stores the current span's context (``traceparent``, ``tracestate``) in
  the saga row's ``trace_context``; `outbox.add` puts it in the event's headers unless the
  caller set a ``traceparent``. No statement, round trip or column shape changes: the
  value rides in the row the request writes anyway.
* The worker runs each claimed saga in a span ``sagaz.saga <name>`` whose parent is the
  stored context (the request's span), each step attempt in ``sagaz.step <step>`` and
  each compensation attempt in ``sagaz.compensate <step>`` below it.
* The relay publishes each event in a producer span ``publish <topic>`` whose parent is
  the event's stored context, and sends that span's context as the message's
  ``traceparent``/``tracestate`` headers, on every broker.
* The consumer helpers (`sagaz.outbox.consumers`) handle each message in a consumer span
  ``process <topic>`` whose parent is the message's ``traceparent``; `processing_span`
  does the same for a consumer of one's own.

Only the OpenTelemetry *API* is used (the ``otel`` extra). Without it everything here is
a no-op that costs one cached check: the import is tried once per process. With the API
but no SDK tracer provider configured, no span is started (the stored context still
travels in the headers). Trace data never changes what is committed or published: an
unreadable stored context is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

    from sagaz.outbox.brokers.base import Broker, OutboxMessage

__all__ = [
    "TRACEPARENT",
    "TRACESTATE",
    "NO_SPAN",
    "add_trace_headers",
    "current_trace_context",
    "processing_span",
    "publish_traced",
    "saga_run_span",
    "step_span",
    "tracing_enabled",
    "trace_context_of",
]

OTEL_PYTHON_TRACER_PROVIDER = "OTEL_PYTHON_TRACER_PROVIDER"
"""The environment variable naming an OpenTelemetry tracer provider to load."""

TRACEPARENT = "traceparent"
"""The W3C header naming the trace and the parent span (``00-<trace>-<span>-<flags>``)."""
TRACESTATE = "tracestate"
"""The W3C header of vendor-specific trace data, carried along with `TRACEPARENT`."""
#: The longest tracestate carried (W3C allows 512 characters; longer ones are dropped).
MAX_TRACESTATE_LENGTH = 512

TraceContext = dict[str, str]
"""``{"traceparent": ..., "tracestate": ...}`` (tracestate only when there is one)."""


class _Api:
    """The OpenTelemetry API pieces sagaz uses, imported once."""

    def __init__(self) -> None:
        from opentelemetry import trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        from sagaz import __version__

        self.trace = trace
        self.propagator = TraceContextTextMapPropagator()
        self.version = __version__
        self.kind = trace.SpanKind
        self.error = trace.Status(trace.StatusCode.ERROR)
        self._tracer: tuple[object, Tracer] | None = None
        # Whether the environment names a provider (read once): without one, and while
        # no provider is set, there is nothing to trace - known without the environment
        # lookup `get_tracer_provider` makes on each call (a KeyError raised and caught,
        # twice per saga run).
        self._provider_from_environment = OTEL_PYTHON_TRACER_PROVIDER in os.environ

    def tracer(self) -> Tracer | None:
        """sagaz's tracer, or None while no tracer provider is configured (no SDK)."""
        # The global the API keeps its provider in; a missing one (another API version)
        # takes the documented way below.
        unset = getattr(self.trace, "_TRACER_PROVIDER", self) is None
        if unset and not self._provider_from_environment:
            return None
        provider = self.trace.get_tracer_provider()
        if isinstance(provider, self.trace.ProxyTracerProvider):
            return None
        cached = self._tracer
        if cached is None or cached[0] is not provider:
            cached = self._tracer = (provider, provider.get_tracer("sagaz", self.version))
        return cached[1]

    def parent(self, carrier: Mapping[str, str] | None) -> Context | None:
        """The context to parent a span on: the one `carrier` holds, else the current."""
        if not carrier or TRACEPARENT not in carrier:
            return None
        context = self.propagator.extract(carrier)
        return context if self.trace.get_current_span(context).get_span_context().is_valid else None

    def carrier(self, span: Span | None = None) -> TraceContext | None:
        """The W3C headers of `span` (default: the current span); None when invalid."""
        span = span or self.trace.get_current_span()
        if not span.get_span_context().is_valid:
            return None
        carrier: TraceContext = {}
        self.propagator.inject(carrier, context=self.trace.set_span_in_context(span))
        if len(carrier.get(TRACESTATE, "")) > MAX_TRACESTATE_LENGTH:
            del carrier[TRACESTATE]
        return carrier


_api: _Api | None = None
_checked = False


def _otel() -> _Api | None:
    """The API, or None when OpenTelemetry is not installed or cannot be loaded (checked
    once per process)."""
    global _api, _checked
    if not _checked:
        try:
            _api = _Api()
        except ImportError:
            _api = None
        except Exception:  # a broken installation must not break start_saga or a run
            logging.getLogger("sagaz.tracing").warning(
                "OpenTelemetry could not be loaded; sagaz traces nothing", exc_info=True
            )
            _api = None
        _checked = True
    return _api


# -- capturing (the request path) ---------------------------------------------------------


def current_trace_context() -> TraceContext | None:
    """The current span's W3C trace context, or None (no OpenTelemetry, no valid span).

    No I/O; with OpenTelemetry absent it costs one cached check."""
    api = _otel()
    return None if api is None else api.carrier()


def add_trace_headers(headers: dict[str, str]) -> None:
    """Add the current span's ``traceparent`` (and ``tracestate``) to `headers`, unless
    they hold a ``traceparent`` already (any case): the caller's wins, whole."""
    api = _otel()
    if api is None or any(name.lower() == TRACEPARENT for name in headers):
        return
    carrier = api.carrier()
    if carrier is not None:
        headers.update(carrier)


def trace_context_of(stored: object) -> TraceContext | None:
    """A stored trace context (the saga row's ``trace_context``, as a document or its
    JSON text) as W3C headers; None for anything unreadable - never raises."""
    if isinstance(stored, str | bytes):
        try:
            stored = json.loads(stored)
        except ValueError:
            return None
    if not isinstance(stored, Mapping):
        return None
    parent = stored.get(TRACEPARENT)
    if not isinstance(parent, str):
        return None
    carrier = {TRACEPARENT: parent}
    state = stored.get(TRACESTATE)
    if isinstance(state, str):
        carrier[TRACESTATE] = state
    return carrier


# -- spans (worker, engine, relay, consumers) ----------------------------------------------

NO_SPAN: AbstractContextManager[object] = nullcontext()
"""What a span helper returns without a tracer provider: nothing to do, nothing allocated."""


def tracing_enabled() -> bool:
    """True when spans would be recorded now (OpenTelemetry and a tracer provider). The
    engine asks once per run whether to open its steps' spans."""
    return _active() is not None


def _active() -> tuple[_Api, Tracer] | None:
    api = _otel()
    tracer = None if api is None else api.tracer()
    return None if api is None or tracer is None else (api, tracer)


def _span(
    active: tuple[_Api, Tracer],
    name: str,
    kind: str,
    attributes: dict[str, Any],
    carrier: Mapping[str, str] | None = None,
) -> AbstractContextManager[object]:
    """A span named `name`, current while inside; its parent is the context `carrier`
    holds, else the current span. An error raised inside is recorded on it (status
    ERROR) and passes through."""
    api, tracer = active
    return tracer.start_as_current_span(
        name, context=api.parent(carrier), kind=getattr(api.kind, kind), attributes=attributes
    )


def _saga_attributes(
    saga_name: str, saga_id: str, attempt: int, lease_token: int
) -> dict[str, Any]:
    return {
        "sagaz.saga_id": saga_id,
        "sagaz.saga": saga_name,
        "sagaz.attempt": attempt,
        "sagaz.lease_token": lease_token,
    }


class Claimed(Protocol):
    """What `saga_run_span` reads of a claimed saga (`sagaz.journal.SagaSnapshot`)."""

    @property
    def saga_id(self) -> str: ...
    @property
    def saga_name(self) -> str: ...
    @property
    def attempts(self) -> int: ...
    @property
    def lease_token(self) -> int: ...


def saga_run_span(saga: Claimed, stored: object = None) -> AbstractContextManager[object]:
    """The span ``sagaz.saga <name>`` of one worker run of a claimed saga (its claim
    count as ``sagaz.attempt``, its fencing token as ``sagaz.lease_token``), parented to
    `stored` (the trace context `start_saga` recorded, see `trace_context_of`) when
    readable, else to the current span."""
    active = _active()
    if active is None:
        return NO_SPAN
    attributes = _saga_attributes(saga.saga_name, saga.saga_id, saga.attempts, saga.lease_token)
    name = f"sagaz.saga {saga.saga_name}"
    return _span(active, name, "INTERNAL", attributes, trace_context_of(stored))


def step_span(
    saga_name: str,
    saga_id: str,
    step: str,
    *,
    attempt: int,
    lease_token: int,
    compensating: bool,
) -> AbstractContextManager[object]:
    """The span of one attempt of a step (``sagaz.step <step>``) or of its compensation
    (``sagaz.compensate <step>``), below the current span (the run's)."""
    active = _active()
    if active is None:
        return NO_SPAN
    attributes = _saga_attributes(saga_name, saga_id, attempt, lease_token)
    attributes["sagaz.step"] = step
    attributes["sagaz.compensating"] = compensating
    name = f"sagaz.{'compensate' if compensating else 'step'} {step}"
    return _span(active, name, "INTERNAL", attributes)


async def publish_traced(
    broker: Broker, messages: Sequence[OutboxMessage]
) -> Sequence[BaseException | None]:
    """`broker.publish_batch(messages)`, each message in a producer span ``publish
    <topic>`` parented to the trace context in its headers, and sent with that span's
    context as its ``traceparent``/``tracestate``. Each span ends with its message's
    outcome (an error recorded on it); an error `publish_batch` raises is recorded on
    every span and raised. Without a tracer provider: `publish_batch` as is."""
    active = _active()
    if active is None or not messages:
        return await broker.publish_batch(messages)
    api, tracer = active
    spans: list[Span] = []
    sent: list[OutboxMessage] = []
    for message in messages:
        span = tracer.start_span(
            f"publish {message.topic}",
            context=api.parent(message.headers),
            kind=api.kind.PRODUCER,
            attributes=_message_attributes(message.id, message.topic, message.saga_id, ""),
        )
        spans.append(span)
        headers = {k: v for k, v in message.headers.items() if k.lower() not in _W3C}
        headers.update(api.carrier(span) or {})
        sent.append(replace(message, headers=headers))
    try:
        results = await broker.publish_batch(sent)
    except BaseException as error:
        for span in spans:
            _end(api, span, error)
        raise
    if len(results) != len(spans):
        mismatch = RuntimeError(f"the broker returned {len(results)} results for {len(spans)}")
        for span in spans:
            _end(api, span, mismatch)
        return results
    for span, outcome in zip(spans, results, strict=True):
        _end(api, span, outcome)
    return results


_W3C = frozenset({TRACEPARENT, TRACESTATE})


def _message_attributes(
    message_id: str, topic: str, saga_id: str | None, system: str
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "messaging.destination.name": topic,
        "messaging.message.id": message_id,
    }
    if system:
        attributes["messaging.system"] = system
    if saga_id:
        attributes["sagaz.saga_id"] = saga_id
    return attributes


def _end(api: _Api, span: Span, error: BaseException | None) -> None:
    if error is not None:
        span.record_exception(error)
        span.set_status(api.error)
    span.end()


class Received(Protocol):
    """What `processing_span` reads of a message (`sagaz.outbox.brokers.ReceivedMessage`)."""

    @property
    def id(self) -> str: ...
    @property
    def topic(self) -> str: ...
    @property
    def headers(self) -> Mapping[str, str]: ...


def processing_span(
    message: Received, *, consumer: str, system: str = ""
) -> AbstractContextManager[object]:
    """The consumer span ``process <topic>`` of handling one received message, parented
    to the message's ``traceparent`` (the relay's publish span), current while inside;
    an error raised inside is recorded on it. For consumers of one's own; sagaz's
    consumer helpers open it around every handler call."""
    active = _active()
    if active is None:
        return NO_SPAN
    attributes = _message_attributes(message.id, message.topic, None, system)
    attributes["messaging.consumer.group.name"] = consumer
    saga_id = message.headers.get("sagaz-saga-id")
    if saga_id:
        attributes["sagaz.saga_id"] = saga_id
    return _span(active, f"process {message.topic}", "CONSUMER", attributes, message.headers)
