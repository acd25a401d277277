"""`sagaz list`, `show`, `stats` and `dlq` against a real PostgreSQL: JSON that parses,
and plain output when piped (CliRunner's output is not a terminal) with nothing cut
short - ids, names and long errors come out whole."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.cli import main
from sagaz.journal import utcnow
from sagaz.store.schema import outbox, saga_steps, sagas
from tests.cli.sagas_for_operations import TwoStepSaga
from tests.cli.test_cli_commands import add_dead_events, statuses
from tests.conftest import DatabaseUrls

LONG_ERROR = "the payment gateway refused: " + " ".join(f"reason-{n}" for n in range(60))
IMPORT = ("--import", "tests.cli.sagas_for_operations")


def invoke(*args: str, input: str | None = None) -> Any:
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


@pytest.fixture
def engine(pg: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = pg.sync_engine()
    yield engine
    engine.dispose()


def start_sagas(engine: sa.Engine, count: int) -> list[str]:
    with Session(engine) as session:
        ids = [start_saga(session, TwoStepSaga, {"n": n}) for n in range(count)]
        session.commit()
    return ids


def fail_with_long_error(engine: sa.Engine, saga_id: str) -> None:
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            sa.update(sagas)
            .where(sagas.c.id == saga_id)
            .values(status="failed", error=LONG_ERROR, updated_at=now)
        )
        connection.execute(
            sa.insert(saga_steps).values(
                saga_id=saga_id,
                name="first",
                status="compensation_failed",
                attempts=2,
                error=LONG_ERROR,
                result={"first": 1},
                started_at=now,
                finished_at=now,
                updated_at=now,
            )
        )


def test_list_prints_whole_ids_and_errors_when_piped_and_pages(
    pg: DatabaseUrls, engine: sa.Engine
) -> None:
    ids = start_sagas(engine, 3)
    fail_with_long_error(engine, ids[0])
    listed = invoke("list", "--url", pg.url, "--instances", *IMPORT)
    assert listed.exit_code == 0, listed.output
    for saga_id in ids:
        assert saga_id in listed.output.split()
    assert LONG_ERROR in listed.output
    assert "first -> second" in listed.output
    assert "…" not in listed.output
    assert "─" not in listed.output

    failed = invoke("list", "--url", pg.url, "--status", "failed")
    assert ids[0] in failed.output
    assert ids[1] not in failed.output
    assert ids[0] not in invoke("list", "--url", pg.url, "--older-than", "1h").output
    assert ids[0] in invoke("list", "--url", pg.url, "--newer-than", "1h").output

    pages = [
        json.loads(invoke("list", "--url", pg.url, "--json", "--limit", "2", "--offset", o).output)
        for o in ("0", "2")
    ]
    assert pages[0]["next_offset"] == 2
    assert pages[1]["next_offset"] is None
    paged = [saga["id"] for page in pages for saga in page["sagas"]]
    assert sorted(paged) == sorted(ids)
    by_id = {saga["id"]: saga for saga in pages[0]["sagas"] + pages[1]["sagas"]}
    assert by_id[ids[0]]["status"] == "failed"
    assert by_id[ids[0]]["error"] == LONG_ERROR
    assert "ops-two-step" in pages[0]["registered"]


def test_show_gives_steps_timings_errors_and_the_compensation_path(
    pg: DatabaseUrls, engine: sa.Engine
) -> None:
    (saga_id,) = start_sagas(engine, 1)
    fail_with_long_error(engine, saga_id)
    shown = invoke("show", "--url", pg.url, saga_id, "--json", *IMPORT)
    assert shown.exit_code == 0, shown.output
    document = json.loads(shown.output)
    assert document["id"] == saga_id
    assert document["status"] == "failed"
    assert document["error"] == LONG_ERROR
    first, second = document["steps"]
    assert first["name"] == "first"
    assert first["status"] == "compensation_failed"
    assert first["attempts"] == 2
    assert first["error"] == LONG_ERROR
    assert first["duration_seconds"] == 0.0
    assert first["depends_on"] == []
    assert second == {**second, "name": "second", "status": "not started", "attempts": 0}
    assert document["compensation_path"] == [{"step": "first", "status": "compensation_failed"}]

    plain = invoke("show", "--url", pg.url, saga_id)  # without the definition imported
    assert plain.exit_code == 0, plain.output
    assert saga_id in plain.output
    assert plain.output.count(LONG_ERROR) == 2  # the saga's error and the step's
    assert "Compensation path: first (compensation_failed)" in plain.output

    missing = invoke("show", "--url", pg.url, "00000000-0000-0000-0000-000000000000")
    assert missing.exit_code == 1
    assert "there is no saga" in missing.output


def test_dlq_show_list_and_purge(pg: DatabaseUrls, engine: sa.Engine) -> None:
    first, second, third = add_dead_events(pg, ["orders", "orders", "payments"])
    with engine.begin() as connection:
        connection.execute(sa.update(outbox).values(last_error=LONG_ERROR))
    listed = invoke("dlq", "list", "--url", pg.url)
    assert all(event_id in listed.output for event_id in (first, second, third))
    assert LONG_ERROR in listed.output
    documents = json.loads(invoke("dlq", "list", "--url", pg.url, "--json").output)["events"]
    assert [event["id"] for event in documents] == [first, second, third]
    shown = json.loads(invoke("dlq", "show", "--url", pg.url, second, "--json").output)
    assert shown["id"] == second
    assert shown["topic"] == "orders"
    assert shown["last_error"] == LONG_ERROR
    assert shown["attempts"] == 10

    for answer in (None, "n\n"):
        refused = invoke("dlq", "purge", "--url", pg.url, "--all", input=answer)
        assert refused.exit_code == 1
        assert "Aborted" in refused.output
        refused = invoke("dlq", "requeue", "--url", pg.url, first, input=answer)
        assert refused.exit_code == 1
        assert "Aborted" in refused.output
    assert set(statuses(pg).values()) == {"dead"}
    purged = invoke("dlq", "purge", "--url", pg.url, "--all", "--topic", "orders", "--yes")
    assert "purged 2 event(s)" in purged.output
    assert statuses(pg) == {third: "dead"}
    gone = invoke("dlq", "show", "--url", pg.url, first)
    assert gone.exit_code == 1
    assert "there is no dead-lettered event" in gone.output


def test_stats_counts_and_health(pg: DatabaseUrls, engine: sa.Engine) -> None:
    ids = start_sagas(engine, 3)
    fail_with_long_error(engine, ids[0])
    with engine.begin() as connection:
        connection.execute(
            sa.update(sagas)
            .where(sagas.c.id == ids[1])
            .values(
                status="running",
                lease_owner="worker-with-a-rather-long-name-that-must-not-be-cut-0123456789",
                lease_expires_at=utcnow() + timedelta(minutes=5),
            )
        )
    stats = invoke("stats", "--url", pg.url, "--json")
    document = json.loads(stats.output)
    # create_all made these tables (no revision recorded, every column there): healthy
    assert stats.exit_code == 0, stats.output
    assert document["health"]["status"] == "ok"
    assert document["by_status"] == {"failed": 1, "pending": 1, "running": 1}
    assert document["by_name"] == {"ops-two-step": {"failed": 1, "pending": 1, "running": 1}}
    assert document["lease_holders"] == {
        "worker-with-a-rather-long-name-that-must-not-be-cut-0123456789": 1
    }
    plain = invoke("stats", "--url", pg.url)
    assert "worker-with-a-rather-long-name-that-must-not-be-cut-0123456789" in plain.output
    with engine.begin() as connection:  # a table lacking a column: failing, exit status 1
        connection.execute(sa.text("ALTER TABLE sagaz_sagas DROP COLUMN cancel_requested_at"))
    failing = invoke("stats", "--url", pg.url)
    assert failing.exit_code == 1
    assert "sagaz db upgrade" in failing.output
