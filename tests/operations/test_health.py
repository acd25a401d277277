"""`sagaz.operations.health.check_health` on real databases: OK on migrated tables,
DEGRADED past a threshold or at a revision this sagaz does not know, FAILING when the
database does not answer or the tables are missing or behind."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
import sqlalchemy as sa

from sagaz.errors import ConfigurationError
from sagaz.journal import utcnow
from sagaz.operations.health import (
    HealthStatus,
    HealthThresholds,
    check_health,
    expected_revision,
)
from sagaz.store import migrations
from sagaz.store.engines import create_engine
from sagaz.store.schema import outbox, sagas
from tests.conftest import DatabaseUrls


@pytest.fixture(params=["postgresql", "sqlite"])
def migrated(request: pytest.FixtureRequest) -> Iterator[DatabaseUrls]:
    urls: DatabaseUrls = request.getfixturevalue(
        "pg_empty" if request.param == "postgresql" else "sqlite_empty"
    )
    migrations.upgrade(urls.url)
    return urls


def add_event(engine: sa.Engine, *, status: str, age: timedelta) -> None:
    at = utcnow() - age
    with engine.begin() as connection:
        connection.execute(
            sa.insert(outbox).values(
                id=str(uuid.uuid4()),
                topic="orders",
                payload={},
                headers={},
                status=status,
                next_attempt_at=at,
                created_at=at,
            )
        )


def test_migrated_tables_are_ok_and_thresholds_degrade(migrated: DatabaseUrls) -> None:
    engine = migrated.sync_engine()
    try:
        report = check_health(engine)
        assert report.status is HealthStatus.OK, report.problems
        assert report.database_reachable
        assert report.schema_revision == expected_revision() == "0005_trace_context"
        assert report.sagas == {"pending": 0, "running": 0, "compensating": 0, "failed": 0}
        assert report.outbox is not None
        assert report.outbox.pending == 0

        add_event(engine, status="pending", age=timedelta(minutes=10))
        add_event(engine, status="dead", age=timedelta(minutes=1))
        report = check_health(engine)
        assert report.status is HealthStatus.DEGRADED
        assert report.outbox is not None
        assert (report.outbox.pending, report.outbox.dead) == (1, 1)
        assert any("dead-lettered events (more than 0)" in p for p in report.problems)
        assert any("since the oldest pending event" in p for p in report.problems)
        relaxed = HealthThresholds(max_dead=None, max_oldest_pending_seconds=3600)
        assert check_health(engine, thresholds=relaxed).ok

        with engine.begin() as connection:
            connection.execute(
                sa.insert(sagas).values(
                    id=str(uuid.uuid4()),
                    name="x",
                    status="failed",
                    context={},
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )
        report = check_health(engine, thresholds=relaxed)
        assert report.ok
        assert report.sagas["failed"] == 1
        strict = HealthThresholds(
            max_dead=None, max_oldest_pending_seconds=None, max_failed_sagas=0
        )
        assert check_health(engine, thresholds=strict).status is HealthStatus.DEGRADED
        assert report.as_dict()["outbox"]["pending"] == 1
    finally:
        engine.dispose()


async def test_async_engine_gives_the_same_report(migrated: DatabaseUrls) -> None:
    engine = migrated.async_engine()
    try:
        report = await check_health(engine)
        assert report.status is HealthStatus.OK, report.problems
        async with engine.connect() as connection:
            assert (await check_health(connection)).ok
    finally:
        await engine.dispose()


def test_tables_without_a_revision_pass_when_complete_and_fail_when_not(pg: DatabaseUrls) -> None:
    """The rule of sagaz.store.schema_check: metadata.create_all's tables are fine."""
    engine = pg.sync_engine()  # create_all: the tables, but no revision recorded
    try:
        complete = check_health(engine)
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE sagaz_sagas DROP COLUMN cancel_requested_at"))
        lacking = check_health(engine)
    finally:
        engine.dispose()
    assert complete.status is HealthStatus.OK, complete.problems
    assert complete.schema_revision is None
    assert lacking.status is HealthStatus.FAILING
    assert "sagaz_sagas.cancel_requested_at" in lacking.problems[0]
    assert "sagaz db upgrade" in lacking.problems[0]


def test_schema_behind_or_unknown(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url, "0003_worker_claims")
    behind = pg_empty.sync_engine()
    try:
        report = check_health(behind)
        assert report.status is HealthStatus.FAILING
        assert "at revision 0003_worker_claims, this sagaz needs 0005" in report.problems[0]
        migrations.upgrade(pg_empty.url)
        with behind.begin() as connection:
            connection.execute(sa.text("UPDATE sagaz_alembic_version SET version_num = '9999_x'"))
        report = check_health(behind)
        assert report.status is HealthStatus.DEGRADED
        assert "unknown to this sagaz" in report.problems[0]
    finally:
        behind.dispose()


def test_a_database_that_does_not_answer_is_failing() -> None:
    engine = create_engine("postgresql+psycopg://sagaz:s3cret-pw@127.0.0.1:9/nowhere")
    try:
        report = check_health(engine)
    finally:
        engine.dispose()
    assert report.status is HealthStatus.FAILING
    assert not report.database_reachable
    assert report.outbox is None
    assert "does not answer" in report.problems[0]
    assert "s3cret-pw" not in str(report.as_dict())


@pytest.mark.parametrize("fixture", ["pg_empty", "sqlite_empty"])
def test_missing_tables_are_failing(request: pytest.FixtureRequest, fixture: str) -> None:
    engine = request.getfixturevalue(fixture).sync_engine()
    try:
        report = check_health(engine)
    finally:
        engine.dispose()
    assert report.status is HealthStatus.FAILING
    assert report.database_reachable
    assert "reading sagaz's tables failed" in report.problems[0]


@pytest.mark.parametrize("field", ["max_pending", "max_dead", "max_oldest_pending_seconds"])
def test_bad_thresholds_are_refused(field: str) -> None:
    with pytest.raises(ConfigurationError, match=f"HealthThresholds.{field} must be"):
        HealthThresholds(**{field: -1})  # type: ignore[arg-type]
