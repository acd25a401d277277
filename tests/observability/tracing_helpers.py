"""The OpenTelemetry SDK the trace tests export into, and the downstream half of a trace:
a saga worker, the outbox relay to the real Redis, and a Redis consumer, each continuing
the trace a web request started (see sagaz.tracing)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util._once import Once
from sqlalchemy.ext.asyncio import AsyncSession

from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.brokers.common import ReceivedMessage
from sagaz.outbox.consumers import consumer_from_url
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.engines import create_async_engine
from sagaz.store.schema import sagas
from sagaz.worker import SagaWorker

EXPORTER = InMemorySpanExporter()
PROVIDER = TracerProvider()
PROVIDER.add_span_processor(SimpleSpanProcessor(EXPORTER))


#: The incoming request's trace: what every span of the chain must belong to.
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
REMOTE_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{REMOTE_PARENT}-01"
REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def recording() -> Iterator[InMemorySpanExporter]:
    """`PROVIDER` as the process's tracer provider while inside, its exporter emptied (the
    `exporter` fixture of tests/conftest.py). Afterwards no provider is set again, so no
    other test runs with spans (a span makes a trace id appear in log records, ...)."""
    _reset_tracer_provider()
    trace.set_tracer_provider(PROVIDER)
    EXPORTER.clear()
    try:
        yield EXPORTER
    finally:
        _reset_tracer_provider()
        EXPORTER.clear()


def _reset_tracer_provider() -> None:
    # The API allows setting the global provider once per process; its own test helpers
    # (opentelemetry-test-utils' reset_trace_globals) reset these two the same way.
    trace._TRACER_PROVIDER_SET_ONCE = Once()  # type: ignore[attr-defined]
    trace._TRACER_PROVIDER = None  # type: ignore[attr-defined]


@dataclass
class Downstream:
    """What the consumer saw: the message, and the span current in its handler."""

    message: ReceivedMessage
    handler_span: trace.SpanContext
    topic: str
    """The outbox topic (the message's topic is the Redis stream: prefix + topic)."""


async def continue_downstream(
    database_url: str, saga_id: str, *, final_status: str = "completed", within: float = 30.0
) -> Downstream:
    """Run the saga `saga_id` through a polling worker to `final_status`, publish the
    outbox through the relay to Redis (a stream prefix of its own) and consume it."""
    engine = create_async_engine(database_url, poolclass=sa.NullPool)
    prefix = f"trace-{uuid.uuid4().hex[:12]}."
    url = f"{REDIS_URL}?stream_prefix={prefix}"
    seen: list[tuple[ReceivedMessage, trace.SpanContext]] = []

    async def handler(_session: AsyncSession, message: ReceivedMessage) -> None:
        seen.append((message, trace.get_current_span().get_span_context()))

    try:
        async with asyncio.timeout(within):
            worker = SagaWorker(engine, listen=False, poll_interval=0.05, lease_seconds=5)
            running = asyncio.create_task(worker.run_until_stopped())
            try:
                while await _status(engine, saga_id) != final_status:
                    await asyncio.sleep(0.05)
            finally:
                worker.stop()
                await running
            broker = broker_from_url(url)
            await broker.connect()
            try:
                result = await OutboxRelay(engine, broker, listen=False).relay_once()
                assert result.published >= 1, result
            finally:
                await broker.close()
            topics = await _topics(engine)
            assert len(topics) == 1, topics
            consumer = consumer_from_url(url, topics[0], "traces", handler, engine, block=0.2)
            consuming = asyncio.create_task(consumer.run())
            try:
                while not seen:
                    await asyncio.sleep(0.05)
            finally:
                consuming.cancel()
                await asyncio.gather(consuming, return_exceptions=True)
    finally:
        await _drop_streams(prefix)
        await engine.dispose()
    return Downstream(*seen[0], topic=topics[0])


async def _status(engine: sa.ext.asyncio.AsyncEngine, saga_id: str) -> str | None:
    async with engine.connect() as connection:
        return await connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id))


async def _topics(engine: sa.ext.asyncio.AsyncEngine) -> list[str]:
    from sagaz.store.schema import outbox

    async with engine.connect() as connection:
        return list((await connection.scalars(sa.select(outbox.c.topic).distinct())).all())


async def _drop_streams(prefix: str) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [span for span in spans if span.name == name]
    assert len(found) == 1, (name, [span.name for span in spans])
    return found[0]


def parent_id(span: ReadableSpan) -> int:
    assert span.parent is not None, f"{span.name} has no parent"
    return span.parent.span_id


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def check_one_trace(
    spans: Sequence[ReadableSpan],
    downstream: Downstream,
    *,
    saga_name: str,
    saga_id: str,
    steps: Sequence[str],
    compensations: Sequence[str] = (),
) -> None:
    """The request's server span continues the incoming traceparent; the saga's run span
    is its child, each step (and compensation) attempt a child of the run; the event's
    publish span (producer) a child of the request's span, and the consumer's processing
    span (consumer) a child of the publish span, current in the handler. All one trace."""
    (server,) = [span for span in spans if span.kind is SpanKind.SERVER]
    assert parent_id(server) == int(REMOTE_PARENT, 16)
    run = one(spans, f"sagaz.saga {saga_name}")
    assert parent_id(run) == span_id(server)
    assert run.attributes is not None
    assert run.attributes["sagaz.saga_id"] == saga_id
    assert run.attributes["sagaz.lease_token"] == 1
    assert run.attributes["sagaz.attempt"] == 1
    for step in steps:
        span = one(spans, f"sagaz.step {step}")
        assert parent_id(span) == span_id(run)
        assert span.attributes is not None
        assert (span.attributes["sagaz.step"], span.attributes["sagaz.attempt"]) == (step, 1)
        assert span.attributes["sagaz.saga_id"] == saga_id
    for step in compensations:
        span = one(spans, f"sagaz.compensate {step}")
        assert parent_id(span) == span_id(run)
    publish = one(spans, f"publish {downstream.topic}")
    assert publish.kind is SpanKind.PRODUCER
    assert parent_id(publish) == span_id(server)
    process = one(spans, f"process {downstream.message.topic}")
    assert process.kind is SpanKind.CONSUMER
    assert parent_id(process) == span_id(publish)
    assert downstream.handler_span.span_id == span_id(process)
    assert downstream.message.headers["traceparent"].split("-")[2] == f"{span_id(publish):016x}"
    sagaz_spans = [run, publish, process, *(s for s in spans if s.name.startswith("sagaz."))]
    assert {f"{span.context.trace_id:032x}" for span in [server, *sagaz_spans] if span.context} == {
        TRACE_ID
    }
