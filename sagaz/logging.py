"""sagaz's logs: the `sagaz` logger hierarchy, the saga fields its records carry, and a
JSON formatter.

Every logger of sagaz is ``sagaz`` or below it (``sagaz.worker``, ``sagaz.outbox.relay``,
...), and importing sagaz configures no handler: the application decides where records
go. Records about a saga or an event carry, as attributes, those of `FIELDS` that apply:
the worker, the relay and the engine pass them with ``extra=`` (`fields`), and
`SagaContextFilter` - installed on a handler - adds what the current context knows: the
saga a worker is running (`bind_saga`), the step running (`sagaz.current_run()`), the
request's correlation id and the OpenTelemetry trace id.

`JsonFormatter` writes a record as one JSON object on one line: time, level, logger,
message, those fields, and the exception's traceback when there is one. Messages never
hold a password or a statement parameter (sagaz describes failures with
`sagaz.store.failures.describe_failure`)::

    handler = logging.StreamHandler()
    handler.setFormatter(sagaz.logging.JsonFormatter())
    handler.addFilter(sagaz.logging.SagaContextFilter())
    logging.getLogger("sagaz").addHandler(handler)

`sagaz worker --log-format json` does that for its own output.
"""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sagaz.context import SagaContextManager
from sagaz.run_context import _current as _current_run

__all__ = ["FIELDS", "JsonFormatter", "SagaContextFilter", "bind_saga", "fields", "saga_fields"]

FIELDS = ("saga_id", "saga_name", "step", "attempt", "event_id", "correlation_id", "trace_id")
"""The record attributes a record about a saga or an event carries (where they apply)."""

_saga: ContextVar[tuple[str, str] | None] = ContextVar("sagaz_log_saga", default=None)


def fields(**values: Any) -> dict[str, Any]:
    """``extra=`` for a log call: the `FIELDS` given, those that are None left out.
    Raises TypeError for a name that is not one of `FIELDS`."""
    unknown = set(values) - set(FIELDS)
    if unknown:
        raise TypeError(f"not sagaz log fields: {', '.join(sorted(unknown))}")
    return {name: value for name, value in values.items() if value is not None}


def saga_fields(saga: Any) -> dict[str, Any]:
    """``extra=`` of a record about `saga` (a `SagaSnapshot`, or anything with its
    `saga_id`, `saga_name` and `correlation_id`)."""
    return fields(
        saga_id=saga.saga_id, saga_name=saga.saga_name, correlation_id=saga.correlation_id
    )


def bind_saga(saga_id: str, saga_name: str) -> None:
    """From now on, `SagaContextFilter` gives the records of the current asyncio task
    (and of the tasks and threads it starts) the saga's id and name. For a task that
    runs one saga (the worker's runs): the binding ends with the task."""
    _saga.set((saga_id, saga_name))


def _trace_id() -> str | None:
    """The current OpenTelemetry trace id (32 hex digits), when the API is in use."""
    trace = sys.modules.get("opentelemetry.trace")  # never imported here: free without it
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None


class SagaContextFilter(logging.Filter):
    """Adds to each record the `FIELDS` the current context knows and the record lacks
    (what a log call passed with ``extra=`` wins). Never drops a record.

    Install it on a handler: a logger's filter sees only that logger's own records."""

    def filter(self, record: logging.LogRecord) -> bool:
        known: dict[str, Any] = {}
        run = _current_run.get()
        if run is not None:
            known.update(
                saga_id=run.saga_id, saga_name=run.saga_name, step=run.step, attempt=run.attempt
            )
        else:
            saga = _saga.get()
            if saga is not None:
                known.update(saga_id=saga[0], saga_name=saga[1])
        request = SagaContextManager.get()
        if request is not None:
            known["correlation_id"] = request.correlation_id
        trace_id = _trace_id()
        if trace_id is not None:
            known["trace_id"] = trace_id
        for name, value in known.items():
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line: ``time`` (ISO 8601, UTC), ``level``,
    ``logger``, ``message``, the `FIELDS` the record carries, and ``exception`` (the
    formatted traceback) when it has one. Never raises for an odd value: what JSON
    cannot hold is written as its ``str``."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                document[name] = value
        if record.exc_info:
            document["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            document["exception"] = record.exc_text
        if record.stack_info:
            document["stack"] = self.formatStack(record.stack_info)
        return json.dumps(document, default=str, ensure_ascii=False)
