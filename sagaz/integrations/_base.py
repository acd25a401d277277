"""The names the adapters used to import from here, kept for compatibility.

The framework-free pieces live in small modules of `sagaz.integrations._core`
(`correlation`, `commit`, `portal`, `health`); the runtime - which imports the engine,
the worker, the relay and the brokers - in `sagaz.runtime` and `sagaz.background`. New code
imports from those modules; this one only re-exports them.
"""

from __future__ import annotations

from sagaz.background import BackgroundRun, BackgroundSagaRunner
from sagaz.integrations._core.commit import COMMIT_FAILED_NOTE, finish_session, finish_session_sync
from sagaz.integrations._core.correlation import (
    CORRELATION_ID_HEADER,
    MAX_CORRELATION_ID_LENGTH,
    correlation_id_from,
    generate_correlation_id,
    is_valid_correlation_id,
    validate_header_name,
)
from sagaz.integrations._core.health import HealthReport, check_health, check_health_sync
from sagaz.integrations._core.portal import EventLoopPortal, LazyPortal
from sagaz.runtime import SagaRuntime, find_runtime

__all__ = [
    "COMMIT_FAILED_NOTE",
    "CORRELATION_ID_HEADER",
    "MAX_CORRELATION_ID_LENGTH",
    "BackgroundRun",
    "BackgroundSagaRunner",
    "EventLoopPortal",
    "HealthReport",
    "LazyPortal",
    "SagaRuntime",
    "check_health",
    "check_health_sync",
    "correlation_id_from",
    "find_runtime",
    "finish_session",
    "finish_session_sync",
    "generate_correlation_id",
    "is_valid_correlation_id",
    "validate_header_name",
]
