"""The health report every adapter's health endpoint serves: is the database reachable,
and the outbox counts."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.outbox.maintenance import OutboxHealth, outbox_health

__all__ = ["HEALTH_TIMEOUT_SECONDS", "HealthReport", "check_health", "check_health_sync"]

log = logging.getLogger("sagaz.integrations")

HEALTH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a health endpoint answers: is the database reachable, and the outbox counts.

    `status_code` is 200 when the database answered (or none is configured), else 503.
    `error` names only the exception type; the details are logged, not served.
    """

    database: Literal["ok", "unavailable", "not configured"]
    outbox: OutboxHealth | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.database != "unavailable"

    @property
    def status_code(self) -> int:
        return 200 if self.healthy else 503

    def as_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": "ok" if self.healthy else "unavailable",
            "database": self.database,
        }
        if self.outbox is not None:
            payload["outbox"] = self.outbox.as_dict()
        if self.error is not None:
            payload["error"] = self.error
        return payload


async def check_health(
    engine: AsyncEngine | None, *, timeout_seconds: float = HEALTH_TIMEOUT_SECONDS
) -> HealthReport:
    """Query the outbox counts through `engine` (one read-only statement), within
    `timeout_seconds`. Never raises for a database problem: it is the report."""
    if engine is None:
        return HealthReport(database="not configured")
    try:
        async with asyncio.timeout(timeout_seconds):
            counts = await outbox_health(engine)
    except (Exception, TimeoutError) as error:
        return _unhealthy(error)
    return HealthReport(database="ok", outbox=counts)


def check_health_sync(engine: sa.Engine | None) -> HealthReport:
    """`check_health` through a sync engine (its connect timeout bounds the wait)."""
    if engine is None:
        return HealthReport(database="not configured")
    try:
        counts = outbox_health(engine)
    except Exception as error:
        return _unhealthy(error)
    return HealthReport(database="ok", outbox=counts)


def _unhealthy(error: BaseException) -> HealthReport:
    log.warning("sagaz health check: the database did not answer", exc_info=error)
    return HealthReport(database="unavailable", error=type(error).__name__)
