"""What every adapter's health endpoint serves: the one health check of
`sagaz.operations.health` (database reachable, schema at this sagaz's revision, outbox
backlog and dead letters, sagas needing attention), bounded in time.

The body is the check's report (`HealthReport.as_dict`) plus ``"database"``: ``"ok"``,
``"unavailable"`` (then only the status and a generic problem: the error, which names
hosts, is logged) or ``"not configured"``. The status code is 503 when the check is
FAILING (the database does not answer, sagaz's tables are missing or too old) and 200
otherwise - DEGRADED too, so a load balancer does not pull an app whose relay is merely
behind; alert on ``"status"`` (see docs/operations.md).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.operations import health
from sagaz.outbox.maintenance import OutboxHealth

__all__ = ["HEALTH_TIMEOUT_SECONDS", "HealthReport", "check_health", "check_health_sync"]

log = logging.getLogger("sagaz.integrations")

HEALTH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a health endpoint answers (see the module docstring). `report` is None when
    no database is configured."""

    database: Literal["ok", "unavailable", "not configured"]
    report: health.HealthReport | None = None

    @property
    def outbox(self) -> OutboxHealth | None:
        return None if self.report is None else self.report.outbox

    @property
    def healthy(self) -> bool:
        return self.report is None or self.report.status is not health.HealthStatus.FAILING

    @property
    def status_code(self) -> int:
        return 200 if self.healthy else 503

    def as_dict(self) -> dict[str, Any]:
        """The body. A database that does not answer is served without its error (which
        names hosts); the error is logged."""
        if self.report is None:
            return {"status": "ok", "database": self.database}
        if self.database == "unavailable":
            return {
                "status": self.report.status.value,
                "database": self.database,
                "problems": ["the database does not answer"],
            }
        return {**self.report.as_dict(), "database": self.database}


async def check_health(
    engine: AsyncEngine | None, *, timeout_seconds: float = HEALTH_TIMEOUT_SECONDS
) -> HealthReport:
    """The health check through `engine`, within `timeout_seconds`. Never raises for a
    database problem: it is the report."""
    if engine is None:
        return HealthReport(database="not configured")
    try:
        async with asyncio.timeout(timeout_seconds):
            report = await health.check_health(engine)
    except TimeoutError as error:
        report = health.unreachable(error)
    return _endpoint_report(report)


def check_health_sync(engine: sa.Engine | None) -> HealthReport:
    """`check_health` through a sync engine (its connect timeout bounds the wait)."""
    if engine is None:
        return HealthReport(database="not configured")
    return _endpoint_report(health.check_health(engine))


def _endpoint_report(report: health.HealthReport) -> HealthReport:
    if not report.database_reachable:
        log.warning("sagaz health check: %s", "; ".join(report.problems))
        return HealthReport(database="unavailable", report=report)
    return HealthReport(database="ok", report=report)
