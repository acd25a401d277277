"""The counts behind `sagaz stats`: the health check, plus every saga by name and status
and the workers holding leases. Read-only.

Unlike the health check these count finished sagas too: one pass over the
(status, name) index, so run it on demand, not from a frequently polled endpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from sagaz._util import utcnow
from sagaz.operations.health import HealthReport, HealthThresholds, read_health_report
from sagaz.store.schema import RUNNABLE_SAGA_STATUSES, sagas


@dataclass(frozen=True, slots=True)
class SagaStats:
    """What `read_stats` found."""

    health: HealthReport
    by_name: dict[str, dict[str, int]]
    """Saga name -> status -> how many (statuses with none left out)."""
    lease_holders: dict[str, int]
    """Worker (lease owner) -> how many sagas it holds a live lease on."""

    @property
    def by_status(self) -> dict[str, int]:
        """Status -> how many sagas, over every name."""
        totals: dict[str, int] = {}
        for counts in self.by_name.values():
            for status, count in counts.items():
                totals[status] = totals.get(status, 0) + count
        return dict(sorted(totals.items()))

    def as_dict(self) -> dict[str, Any]:
        return {
            "health": self.health.as_dict(),
            "by_status": self.by_status,
            "by_name": self.by_name,
            "lease_holders": self.lease_holders,
        }


def count_by_name(connection: sa.Connection) -> dict[str, dict[str, int]]:
    """Every saga counted by name and status."""
    rows = connection.execute(
        sa.select(sagas.c.name, sagas.c.status, sa.func.count())
        .group_by(sagas.c.name, sagas.c.status)
        .order_by(sagas.c.name, sagas.c.status)
    )
    counts: dict[str, dict[str, int]] = {}
    for name, status, count in rows:
        counts.setdefault(name, {})[status] = count
    return counts


def lease_holders(connection: sa.Connection, *, now: datetime) -> dict[str, int]:
    """Workers holding a live lease, with how many sagas each (the runnable index)."""
    rows = connection.execute(
        sa.select(sagas.c.lease_owner, sa.func.count())
        .where(
            sagas.c.status.in_(RUNNABLE_SAGA_STATUSES),
            sagas.c.lease_owner.is_not(None),
            sagas.c.lease_expires_at > now,
        )
        .group_by(sagas.c.lease_owner)
        .order_by(sagas.c.lease_owner)
    )
    return {str(row[0]): int(row[1]) for row in rows}


def read_stats(
    connection: sa.Connection,
    *,
    thresholds: HealthThresholds | None = None,
    now: datetime | None = None,
) -> SagaStats:
    """The health report and the counts, on an open connection. Database errors other
    than the health check's own are raised."""
    now = now or utcnow()
    health = read_health_report(connection, thresholds=thresholds, now=now)
    return SagaStats(health, count_by_name(connection), lease_holders(connection, now=now))


__all__ = ["SagaStats", "count_by_name", "lease_holders", "read_stats"]
