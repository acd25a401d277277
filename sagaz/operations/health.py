"""One health check for sagaz, shared by the framework health endpoints and `sagaz stats`.

`check_health(bind)` answers, read-only and in a few index-served queries: is the
database reachable, are sagaz's tables at the revision this sagaz ships, how far behind
is the outbox (pending events, the oldest one's age, dead letters), and how many sagas
are pending, running, compensating or FAILED. The verdict is `HealthStatus`:

* FAILING - the database does not answer, sagaz's tables are missing or at an older
  revision than this sagaz needs: nothing works until someone acts.
* DEGRADED - sagaz works, but a threshold of `HealthThresholds` is exceeded (the outbox
  is falling behind, events were dead-lettered, ...) or the tables are at a revision this
  sagaz does not know (a newer sagaz migrated them: usual during a rolling deploy).
* OK - otherwise.

It never raises for a database failure: the failure is the report (its message on one
line, without the URL's password or statement parameters).
"""

from __future__ import annotations

from collections.abc import Awaitable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, overload

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import utcnow
from sagaz.errors import ConfigurationError
from sagaz.outbox.binds import AsyncBind, SyncBind, run_on_bind
from sagaz.outbox.maintenance import OutboxHealth, read_health
from sagaz.store import migrations
from sagaz.store.failures import describe_failure
from sagaz.store.schema import sagas
from sagaz.store.schema_check import missing_parts, read_schema

COUNTED_STATUSES = ("pending", "running", "compensating", "failed")
"""Saga statuses the health check counts: each is served by an index and stays small in a
healthy system (COMPLETED and COMPENSATED grow forever; `sagaz stats` counts them)."""

#: What a health check catches as the database failing.
DATABASE_FAILURES = (sa.exc.SQLAlchemyError, OSError)


class HealthStatus(StrEnum):
    """The verdict of a health check (see the module docstring)."""

    OK = "ok"
    DEGRADED = "degraded"
    FAILING = "failing"


@dataclass(frozen=True, slots=True)
class HealthThresholds:
    """Limits past which sagaz is DEGRADED; None switches a check off."""

    max_pending: int | None = 10_000
    """Outbox events not yet published."""
    max_oldest_pending_seconds: float | None = 300.0
    """Age of the oldest unpublished event: the relay is not keeping up (or not running)."""
    max_dead: int | None = 0
    """Dead-lettered events (each needs an operator: `sagaz dlq`)."""
    max_failed_sagas: int | None = None
    """FAILED sagas (each needs an operator: `sagaz retry`); off by default, since they
    stay FAILED until someone acts."""

    def __post_init__(self) -> None:
        for name in ("max_pending", "max_oldest_pending_seconds", "max_dead", "max_failed_sagas"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not value >= 0):
                raise ConfigurationError(
                    f"HealthThresholds.{name} must be a number >= 0 or None, got {value!r}"
                )


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What `check_health` found."""

    status: HealthStatus
    database_reachable: bool
    schema_revision: str | None
    """The revision sagaz's tables are at; None when never migrated or not readable."""
    expected_revision: str
    outbox: OutboxHealth | None
    """None when the database could not be read."""
    sagas: dict[str, int] = field(default_factory=dict)
    """Sagas per status, for `COUNTED_STATUSES` (every one present, 0 included)."""
    problems: tuple[str, ...] = ()
    """Why the status is not OK, one line each."""
    checked_at: datetime = field(default_factory=utcnow)

    @property
    def ok(self) -> bool:
        return self.status is HealthStatus.OK

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (for a health endpoint's body)."""
        return {
            "status": self.status.value,
            "database_reachable": self.database_reachable,
            "schema_revision": self.schema_revision,
            "expected_revision": self.expected_revision,
            "outbox": None if self.outbox is None else self.outbox.as_dict(),
            "sagas": dict(self.sagas),
            "problems": list(self.problems),
            "checked_at": self.checked_at.isoformat(),
        }


def expected_revision() -> str:
    """The head revision of the migrations this sagaz ships."""
    (head,) = migrations.heads()
    return head


def count_sagas(connection: sa.Connection, statuses: Collection[str]) -> dict[str, int]:
    """Sagas per status, for `statuses` (0 for a status none has); served by the status
    index (a range per status, never a scan of finished sagas)."""
    rows = connection.execute(
        sa.select(sagas.c.status, sa.func.count())
        .where(sagas.c.status.in_(list(statuses)))
        .group_by(sagas.c.status)
    )
    counts = dict.fromkeys(statuses, 0)
    counts.update({row[0]: row[1] for row in rows})
    return counts


def _schema_problem(
    connection: sa.Connection, revision: str | None
) -> tuple[HealthStatus, str] | None:
    """The rule of `sagaz.store.schema_check`, as a verdict: the shipped head, or no
    revision but every table and column (tables made by `metadata.create_all`), is fine."""
    expected = expected_revision()
    if revision == expected:
        return None
    if revision is None:
        missing = missing_parts(read_schema(connection).columns)
        if not missing:
            return None
        return HealthStatus.FAILING, (
            f"sagaz's tables carry no revision ({missing}): create or migrate them with "
            "`sagaz db upgrade`"
        )
    if revision in migrations.known_revisions():
        return HealthStatus.FAILING, (
            f"sagaz's tables are at revision {revision}, this sagaz needs {expected}: "
            "run `sagaz db upgrade`"
        )
    return HealthStatus.DEGRADED, (
        f"sagaz's tables are at revision {revision}, unknown to this sagaz (it ships "
        f"{expected}): a newer sagaz migrated them"
    )


def _threshold_problems(
    thresholds: HealthThresholds, outbox: OutboxHealth, counts: dict[str, int]
) -> list[str]:
    oldest = "s since the oldest pending event was written"
    checks = (
        (outbox.pending, thresholds.max_pending, "outbox events pending"),
        (outbox.oldest_pending_age, thresholds.max_oldest_pending_seconds, oldest),
        (outbox.dead, thresholds.max_dead, "dead-lettered events"),
        (counts.get("failed", 0), thresholds.max_failed_sagas, "FAILED sagas"),
    )
    return [
        f"{value:g} {what} (more than {limit:g})"
        for value, limit, what in checks
        if value is not None and limit is not None and value > limit
    ]


def read_health_report(
    connection: sa.Connection,
    *,
    thresholds: HealthThresholds | None = None,
    now: datetime | None = None,
) -> HealthReport:
    """`check_health` on an open connection, in the caller's transaction (a failing
    statement aborts a PostgreSQL transaction: give it a connection of its own)."""
    thresholds = thresholds or HealthThresholds()
    now = now or utcnow()
    expected = expected_revision()
    try:
        revision = migrations.current(connection)
        outbox = read_health(connection, now=now)
        counts = count_sagas(connection, COUNTED_STATUSES)
    except DATABASE_FAILURES as error:
        return HealthReport(
            status=HealthStatus.FAILING,
            database_reachable=True,
            schema_revision=None,
            expected_revision=expected,
            outbox=None,
            problems=(f"reading sagaz's tables failed: {describe_failure(error)}",),
            checked_at=now,
        )
    problems = _threshold_problems(thresholds, outbox, counts)
    status = HealthStatus.DEGRADED if problems else HealthStatus.OK
    schema = _schema_problem(connection, revision)
    if schema is not None:
        problems.insert(0, schema[1])
        status = max(status, schema[0], key=list(HealthStatus).index)
    return HealthReport(status, True, revision, expected, outbox, counts, tuple(problems), now)


def unreachable(error: BaseException, *, now: datetime | None = None) -> HealthReport:
    """The report for a database that could not be connected to."""
    return HealthReport(
        status=HealthStatus.FAILING,
        database_reachable=False,
        schema_revision=None,
        expected_revision=expected_revision(),
        outbox=None,
        problems=(f"the database does not answer: {describe_failure(error)}",),
        checked_at=now or utcnow(),
    )


@overload
def check_health(
    bind: SyncBind, *, thresholds: HealthThresholds | None = None, now: datetime | None = None
) -> HealthReport: ...
@overload
def check_health(
    bind: AsyncBind, *, thresholds: HealthThresholds | None = None, now: datetime | None = None
) -> Awaitable[HealthReport]: ...
def check_health(
    bind: SyncBind | AsyncBind,
    *,
    thresholds: HealthThresholds | None = None,
    now: datetime | None = None,
) -> HealthReport | Awaitable[HealthReport]:
    """sagaz's health on `bind`: a sync Engine or Connection, or (awaitable) an
    AsyncEngine or AsyncConnection. Read-only; an engine's connection is returned to its
    pool. Never raises for a database failure (see the module docstring)."""

    def read(connection: sa.Connection) -> HealthReport:
        return read_health_report(connection, thresholds=thresholds, now=now)

    if isinstance(bind, AsyncEngine):
        return _unless_unreachable(run_on_bind(bind, read, "read"), now)
    if isinstance(bind, sa.Engine):
        try:
            return run_on_bind(bind, read, "read")  # type: ignore[no-any-return]
        except DATABASE_FAILURES as error:
            return unreachable(error, now=now)
    return run_on_bind(bind, read, "read")  # type: ignore[no-any-return]


async def _unless_unreachable(
    report: Awaitable[HealthReport], now: datetime | None
) -> HealthReport:
    try:
        return await report
    except DATABASE_FAILURES as error:
        return unreachable(error, now=now)


__all__ = [
    "COUNTED_STATUSES",
    "HealthReport",
    "HealthStatus",
    "HealthThresholds",
    "check_health",
    "count_sagas",
    "expected_revision",
    "read_health_report",
]
