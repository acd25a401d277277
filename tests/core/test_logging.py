"""sagaz's logs: one `sagaz` logger hierarchy, no handler at import, the saga and event
fields on every record about a saga, and one JSON object per line."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

import sagaz
from sagaz import SagaConfig, SagaStatus
from sagaz.context import SagaContextManager
from sagaz.logging import FIELDS, JsonFormatter, SagaContextFilter, bind_saga, fields
from sagaz.observability import log_transition
from sagaz.runtime import SagaRuntime
from tests.conftest import DatabaseUrls

PACKAGE = Path(sagaz.__file__).parent
app_log = logging.getLogger("tests.app")
SAGA_ID = "6f1d2c3e-0000-4000-8000-00000000abcd"


def test_every_logger_of_sagaz_is_below_sagaz() -> None:
    calls = 0
    for source in PACKAGE.rglob("*.py"):
        for argument in re.findall(r"getLogger\(([^)]*)\)", source.read_text()):
            calls += 1
            assert argument == "__name__" or argument.strip("\"'").startswith("sagaz"), (
                f"{source}: getLogger({argument})"
            )
    assert calls > 10


def test_importing_sagaz_configures_no_handler() -> None:
    modules = [
        "sagaz", "sagaz.logging", "sagaz.metrics", "sagaz.observability", "sagaz.runtime",
        "sagaz.cli", "sagaz.cli.worker", "sagaz.outbox.relay", "sagaz.worker",
        "sagaz.operations.health", "sagaz.integrations.fastapi", "sagaz.integrations.flask",
    ]  # fmt: skip
    script = (
        "import importlib, logging\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "loggers = [logging.root, *logging.Logger.manager.loggerDict.values()]\n"
        # a library's own NullHandler (alembic adds one) is its business, not a handler
        "named = [(l.name, h) for l in loggers for h in getattr(l, 'handlers', ())\n"
        "         if l.name.startswith('sagaz') or l is logging.root\n"
        "         or not isinstance(h, logging.NullHandler)]\n"
        "print(named)\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


@pytest.fixture
def context_filter(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    saga_filter = SagaContextFilter()
    caplog.handler.addFilter(saga_filter)
    yield
    caplog.handler.removeFilter(saga_filter)


async def logging_step(ctx: Mapping[str, Any]) -> dict[str, Any]:
    app_log.info("inside the step")
    return {}


async def boom(ctx: Mapping[str, Any]) -> None:
    raise RuntimeError("boom")


async def test_records_about_a_saga_carry_its_fields(
    pg: DatabaseUrls, caplog: pytest.LogCaptureFixture, context_filter: None
) -> None:
    config = SagaConfig(database_url=pg.url, max_retries=1, retry_backoff=0)
    runtime = SagaRuntime(config)
    await runtime.start()
    saga = sagaz.Saga(name="logged").add_step("a", logging_step).add_step("b", boom)
    try:
        assert runtime.worker is not None
        with caplog.at_level(logging.INFO), SagaContextManager.scope("corr-1"):
            result = await runtime.worker.run_here(
                saga.definition, {}, saga_id=SAGA_ID, listeners=[log_transition]
            )
    finally:
        await runtime.stop()
    assert result.status is SagaStatus.COMPENSATED

    (inside,) = [r for r in caplog.records if r.getMessage() == "inside the step"]
    assert {name: getattr(inside, name, None) for name in FIELDS} == {
        "saga_id": SAGA_ID,
        "saga_name": "logged",
        "step": "a",
        "attempt": 1,
        "event_id": None,
        "correlation_id": "corr-1",
        "trace_id": None,
    }
    failed = [r for r in caplog.records if "step_attempt_failed" in r.getMessage()]
    assert [(r.saga_id, r.saga_name, r.step, r.attempt) for r in failed] == [  # type: ignore[attr-defined]
        (SAGA_ID, "logged", "b", 1)
    ]
    transitions = [r for r in caplog.records if r.name == "sagaz.transitions"]
    assert len(transitions) > 5
    assert all(r.saga_id == SAGA_ID for r in transitions)  # type: ignore[attr-defined]
    assert all(r.correlation_id == "corr-1" for r in transitions)  # type: ignore[attr-defined]


def test_the_filter_adds_what_the_context_knows_and_never_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Context:
        is_valid = True
        trace_id = 0xABC

    class Span:
        def get_span_context(self) -> Context:
            return Context()

    trace = types.SimpleNamespace(get_current_span=Span)
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", trace)  # type: ignore[arg-type]
    record = logging.LogRecord("sagaz.x", logging.INFO, __file__, 1, "m", None, None)
    record.saga_id = "given"

    def in_a_saga() -> None:
        bind_saga("bound", "name")
        with SagaContextManager.scope("c-9"):
            assert SagaContextFilter().filter(record)

    import contextvars

    contextvars.copy_context().run(in_a_saga)
    assert (record.saga_id, record.saga_name) == ("given", "name")  # type: ignore[attr-defined]
    assert record.correlation_id == "c-9"  # type: ignore[attr-defined]
    assert record.trace_id == f"{0xABC:032x}"  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="password"):
        fields(password="x")


def test_json_formatter_writes_one_object_per_line() -> None:
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        record = logging.LogRecord(
            "sagaz.worker", logging.ERROR, __file__, 1, "saga %s\nfailed", ("s-1",), sys.exc_info()
        )
    for name, value in fields(saga_id="s-1", step="a", attempt=2, event_id=None).items():
        setattr(record, name, value)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    document = json.loads(line)
    assert document["message"] == "saga s-1\nfailed"
    assert (document["level"], document["logger"]) == ("ERROR", "sagaz.worker")
    assert (document["saga_id"], document["step"], document["attempt"]) == ("s-1", "a", 2)
    assert "event_id" not in document
    assert "ValueError: line one" in document["exception"]
    assert document["time"].endswith("+00:00")
