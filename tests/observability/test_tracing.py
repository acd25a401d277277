"""sagaz.tracing: what the request path captures, the spans a run, a publish and a
consumer open, and that trace data never breaks a run or costs the request path."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import sqlalchemy as sa
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy.engine.interfaces import CacheStats
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from sagaz import Saga, action, compensate, outbox, start_saga
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.common import ReceivedMessage
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from sagaz.tracing import (
    add_trace_headers,
    current_trace_context,
    processing_span,
    publish_traced,
    trace_context_of,
)
from sagaz.worker import SagaWorker
from tests.core.test_optional_imports import run_blocked
from tests.observability.tracing_helpers import (
    PROVIDER,
    one,
    parent_id,
)
from tests.store.test_request_path import sagaz_statements, statements

tracer = PROVIDER.get_tracer("tests")
CHARGES: dict[str, int] = {}


class TracedSaga(Saga):
    """reserve -> charge; charge fails its first attempt (then succeeds, unless the
    context says `decline`), so its retry and reserve's compensation are traced."""

    saga_name = "traced"

    @action("reserve")
    async def reserve(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"reserved": True}

    @compensate("reserve")
    async def release(self, ctx: Mapping[str, Any]) -> None:
        return None

    @action("charge", depends_on=["reserve"], max_retries=1, retry_backoff=0.01)
    async def charge(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
        key = str(ctx["key"])
        CHARGES[key] = CHARGES.get(key, 0) + 1
        if CHARGES[key] == 1 or ctx.get("decline"):
            raise RuntimeError("card declined")
        return {"charged": True}


def w3c(span: trace.Span) -> str:
    context = span.get_span_context()
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"


# -- the request path ----------------------------------------------------------------------


@pytest.mark.usefixtures("exporter")
def test_start_saga_and_outbox_add_record_the_current_span(sync_engine: sa.Engine) -> None:
    with Session(sync_engine) as session:
        with tracer.start_as_current_span("request") as span:
            saga_id = start_saga(session, TracedSaga, {"key": "a"})
            event_id = outbox.add(session, "traced.event", {"n": 1})
            mine = outbox.add(session, "traced.event", {"n": 2}, headers={"TraceParent": "x"})
        untraced = outbox.add(session, "traced.event", {"n": 3})
        session.commit()
    with sync_engine.connect() as connection:
        stored = connection.scalar(
            sa.select(sa.cast(sagas.c.trace_context, sa.Text)).where(sagas.c.id == saga_id)
        )
        headers = dict(
            connection.execute(sa.select(outbox_table.c.id, outbox_table.c.headers)).all()
        )
    assert json.loads(stored) == {"traceparent": w3c(span)}
    by_id = {str(key): value for key, value in headers.items()}
    assert by_id[event_id] == {"traceparent": w3c(span)}
    assert by_id[mine] == {"TraceParent": "x"}  # the caller's wins, tracestate not added
    assert by_id[untraced] == {}


def test_no_span_no_trace_context() -> None:
    assert current_trace_context() is None
    headers: dict[str, str] = {}
    add_trace_headers(headers)
    assert headers == {}
    with tracer.start_as_current_span("request") as span:
        # longer than W3C's 512 characters: dropped, the traceparent kept
        state = trace.TraceState([(f"k{i}", "v" * 20) for i in range(30)])
        context = trace.SpanContext(
            span.get_span_context().trace_id, 1, is_remote=True, trace_state=state
        )
        with trace.use_span(trace.NonRecordingSpan(context)):
            assert current_trace_context() == {"traceparent": w3c(trace.get_current_span())}


@pytest.mark.usefixtures("exporter")
def test_the_request_path_keeps_one_cached_statement_with_a_span(
    sync_engine: sa.Engine,
) -> None:
    """Traced or not, the request writes its rows in statements of one shape, served
    from the compiled cache after the first."""
    hits = []
    for traced in (False, True, False, True):
        with statements(sync_engine) as seen, Session(sync_engine) as session:
            with tracer.start_as_current_span("request") if traced else _nothing():
                start_saga(session, TracedSaga, {"key": "x"})
                outbox.add(session, "traced.event", {"n": 1})
            session.commit()
        hits.append([hit for _sql, hit in sagaz_statements(seen)])
    warm = 1 if sync_engine.dialect.name == "postgresql" else 2
    assert all(h == [CacheStats.CACHE_HIT] * len(hits[0]) for h in hits[warm:])


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None


@pytest.mark.parametrize(
    "stored",
    [None, "", "not json", "[]", '{"traceparent": 5}', 7, {"tracestate": "a=b"}, b"\xff"],
)
def test_an_unreadable_trace_context_is_ignored(stored: object) -> None:
    assert trace_context_of(stored) is None


def test_a_stored_trace_context_is_read() -> None:
    document = {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "a=b"}
    assert trace_context_of(json.dumps(document)) == document
    assert trace_context_of(document) == document


def test_without_opentelemetry_nothing_is_captured() -> None:
    done = run_blocked(
        """
        from sagaz.tracing import add_trace_headers, current_trace_context, trace_context_of
        from sagaz.outbox.events import build_event_row
        assert current_trace_context() is None
        headers = {}
        add_trace_headers(headers)
        assert headers == {}
        assert build_event_row("t", {})["headers"] == {}
        import sys
        assert "opentelemetry" not in sys.modules
        print("ok")
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


# -- the worker's spans --------------------------------------------------------------------


async def run_by_worker(engine: AsyncEngine, saga_id: str, final: str) -> None:
    worker = SagaWorker(engine, listen=False, poll_interval=0.05, lease_seconds=5)
    running = asyncio.create_task(worker.run_until_stopped())
    try:
        async with asyncio.timeout(20):
            while True:
                async with engine.connect() as connection:
                    status = await connection.scalar(
                        sa.select(sagas.c.status).where(sagas.c.id == saga_id)
                    )
                if status == final:
                    return
                await asyncio.sleep(0.05)
    finally:
        worker.stop()
        await running


def start_in(engine: sa.Engine, context: dict[str, Any]) -> tuple[str, trace.Span]:
    with Session(engine) as session, tracer.start_as_current_span("request") as span:
        saga_id = start_saga(session, TracedSaga, context)
        session.commit()
    return saga_id, span


async def test_a_run_continues_the_request_with_step_and_compensation_spans(
    sync_engine: sa.Engine, async_engine: AsyncEngine, exporter: InMemorySpanExporter
) -> None:
    key = uuid.uuid4().hex
    saga_id, request = start_in(sync_engine, {"key": key, "decline": True})
    await run_by_worker(async_engine, saga_id, "compensated")
    spans = exporter.get_finished_spans()
    run = one(spans, "sagaz.saga traced")
    assert run.context is not None
    assert run.context.trace_id == request.get_span_context().trace_id
    assert parent_id(run) == request.get_span_context().span_id
    assert run.attributes == {
        "sagaz.saga_id": saga_id,
        "sagaz.saga": "traced",
        "sagaz.attempt": 1,
        "sagaz.lease_token": 1,
    }
    charges = sorted(
        (s for s in spans if s.name == "sagaz.step charge"),
        key=lambda s: _attribute(s, "sagaz.attempt"),
    )
    assert [_attribute(s, "sagaz.attempt") for s in charges] == [1, 2]
    assert all(s.status.status_code is StatusCode.ERROR for s in charges)
    assert all(parent_id(s) == run.context.span_id for s in charges)
    assert [e.name for e in charges[0].events] == ["exception"]
    release = one(spans, "sagaz.compensate reserve")
    assert parent_id(release) == run.context.span_id
    assert _attribute(release, "sagaz.compensating") is True
    assert _attribute(release, "sagaz.lease_token") == 1
    assert release.status.status_code is not StatusCode.ERROR


def _attribute(span: ReadableSpan, name: str) -> Any:
    assert span.attributes is not None
    return span.attributes[name]


async def test_an_unreadable_stored_context_starts_a_trace_of_its_own(
    sync_engine: sa.Engine, async_engine: AsyncEngine, exporter: InMemorySpanExporter
) -> None:
    saga_id, _request = start_in(sync_engine, {"key": uuid.uuid4().hex})
    with sync_engine.begin() as connection:
        connection.execute(
            sa.update(sagas)
            .where(sagas.c.id == saga_id)
            .values(trace_context={"traceparent": "00-garbage"})
        )
    await run_by_worker(async_engine, saga_id, "completed")
    run = one(exporter.get_finished_spans(), "sagaz.saga traced")
    assert run.parent is None


# -- publishing and consuming --------------------------------------------------------------


class RecordingBroker:
    """Confirms every message but those whose topic starts with "fail"."""

    def __init__(self) -> None:
        self.sent: list[OutboxMessage] = []

    async def connect(self) -> None:
        return None

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> list[BaseException | None]:
        self.sent.extend(messages)
        return [RuntimeError("nack") if m.topic.startswith("fail") else None for m in messages]

    async def close(self) -> None:
        return None


async def test_each_message_is_published_in_a_producer_span_sent_along(
    exporter: InMemorySpanExporter,
) -> None:
    with tracer.start_as_current_span("request") as request:
        stored = {"traceparent": w3c(request), "tracestate": "a=b", "x": "y"}
    messages = [
        OutboxMessage(id="1", topic="ok.topic", payload={}, headers=stored, saga_id="s-1"),
        OutboxMessage(id="2", topic="fail.topic", payload={}, headers={}),
    ]
    broker = RecordingBroker()
    results = await publish_traced(broker, messages)
    assert [type(r) for r in results] == [type(None), RuntimeError]
    spans = exporter.get_finished_spans()
    ok, failed = one(spans, "publish ok.topic"), one(spans, "publish fail.topic")
    assert ok.kind is failed.kind is SpanKind.PRODUCER
    assert parent_id(ok) == request.get_span_context().span_id
    assert failed.parent is None  # no stored context: a trace of its own
    assert failed.status.status_code is StatusCode.ERROR
    assert ok.attributes is not None
    assert ok.attributes["messaging.message.id"] == "1"
    assert ok.attributes["sagaz.saga_id"] == "s-1"
    assert ok.context is not None
    sent = broker.sent[0].headers
    assert sent["traceparent"].split("-")[1:3] == [
        f"{ok.context.trace_id:032x}",
        f"{ok.context.span_id:016x}",
    ]
    assert sent["tracestate"] == "a=b"
    assert sent["x"] == "y"
    assert messages[0].headers is stored  # the stored message is not changed


async def test_a_broker_that_raises_fails_every_span(exporter: InMemorySpanExporter) -> None:

    class Down(RecordingBroker):
        async def publish_batch(
            self, messages: Sequence[OutboxMessage]
        ) -> list[BaseException | None]:
            raise ConnectionError("down")

    with pytest.raises(ConnectionError):
        await publish_traced(Down(), [OutboxMessage(id="1", topic="t", payload={})])
    span = one(exporter.get_finished_spans(), "publish t")
    assert span.status.status_code is StatusCode.ERROR


def test_processing_span_continues_the_message(exporter: InMemorySpanExporter) -> None:
    with tracer.start_as_current_span("publish") as publish:
        headers = {"traceparent": w3c(publish), "sagaz-saga-id": "s-9"}
    message = ReceivedMessage(id="m-1", topic="orders", payload={}, headers=headers)
    with (
        pytest.raises(ValueError, match="handler"),
        processing_span(message, consumer="billing", system="redis"),
    ):
        raise ValueError("handler failed")
    span = one(exporter.get_finished_spans(), "process orders")
    assert span.kind is SpanKind.CONSUMER
    assert parent_id(span) == publish.get_span_context().span_id
    assert span.status.status_code is StatusCode.ERROR
    assert span.attributes == {
        "messaging.destination.name": "orders",
        "messaging.message.id": "m-1",
        "messaging.system": "redis",
        "messaging.consumer.group.name": "billing",
        "sagaz.saga_id": "s-9",
    }
