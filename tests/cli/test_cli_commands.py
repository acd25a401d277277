"""The `sagaz` command: list, dlq, and the worker's usage errors (the worker itself is
exercised as real processes in tests/worker/test_worker_processes.py)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.orm import Session

from sagaz import start_saga
from sagaz.cli import main
from sagaz.journal import utcnow
from sagaz.store.schema import outbox
from tests.conftest import DatabaseUrls
from tests.worker.sagas_for_workers import ThreeStepSaga


def invoke(*args: str, **kwargs: Any) -> Any:
    return CliRunner().invoke(main, list(args), catch_exceptions=False, **kwargs)


def test_list_shows_registered_sagas_and_instances(db: DatabaseUrls) -> None:
    engine = db.sync_engine()
    with Session(engine) as session:
        saga_id = start_saga(session, ThreeStepSaga, {"n": 1})
        session.commit()
    engine.dispose()
    result = invoke("list", "--url", db.url, "--import", "tests.worker.sagas_for_workers")
    assert result.exit_code == 0, result.output
    assert "worker-three-step" in result.output
    assert "reserve -> charge -> ship" in result.output
    assert saga_id not in result.output
    result = invoke("list", "--url", db.url, "--status", "pending", "--limit", "5")
    assert result.exit_code == 0, result.output
    assert saga_id[:8] in result.output


def add_dead_events(db: DatabaseUrls, topics: list[str]) -> list[str]:
    engine = db.sync_engine()
    ids = [str(uuid.uuid4()) for _ in topics]
    now = utcnow()
    with engine.begin() as connection:
        connection.execute(
            sa.insert(outbox),
            [
                {
                    "id": event_id,
                    "topic": topic,
                    "payload": {},
                    "headers": {},
                    "status": "dead",
                    "attempts": 10,
                    "next_attempt_at": now,
                    "created_at": now,
                    "last_error": "broker said no",
                }
                for event_id, topic in zip(ids, topics, strict=True)
            ],
        )
    engine.dispose()
    return ids


def statuses(db: DatabaseUrls) -> dict[str, str]:
    engine = db.sync_engine()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(outbox.c.id, outbox.c.status)).all()
    engine.dispose()
    return {str(row.id): row.status for row in rows}


def test_dlq_list_and_requeue(db: DatabaseUrls) -> None:
    first, second, third = add_dead_events(db, ["orders", "orders", "payments"])
    listed = invoke("dlq", "list", "--url", db.url)
    assert listed.exit_code == 0, listed.output
    assert "broker said no" in listed.output
    assert "Dead-lettered events (3)" in listed.output
    assert "(2)" in invoke("dlq", "list", "--url", db.url, "--topic", "orders").output
    requeued = invoke("dlq", "requeue", "--url", db.url, first, input="y\n")
    assert "re-queued 1 event(s)" in requeued.output
    assert statuses(db) == {first: "pending", second: "dead", third: "dead"}
    requeued = invoke("dlq", "requeue", "--url", db.url, "--all", "--topic", "payments", "--yes")
    assert "re-queued 1 event(s)" in requeued.output
    assert statuses(db)[third] == "pending"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["dlq", "requeue"], "give event ids, or --all"),
        (["dlq", "requeue", "--all", "x"], "give event ids, or --all"),
        (["dlq", "requeue", "not-a-uuid"], "not-a-uuid"),
        (["dlq", "purge"], "give event ids, or --all"),
        (["dlq", "purge", "not-a-uuid", "--yes"], "not-a-uuid"),
        (["dlq", "show", "not-a-uuid"], "not-a-uuid"),
        (["show", "not-a-uuid"], "not-a-uuid"),
        (["list", "--older-than", "soon"], "not a duration"),
    ],
)
def test_dlq_usage_errors(sqlite: DatabaseUrls, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--url", sqlite.url])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--no-sagas", "--no-outbox"], "nothing to run"),
        (["--import", "no.such.module"], "cannot import 'no.such.module'"),
    ],
)
def test_worker_usage_errors(sqlite: DatabaseUrls, args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["worker", "--url", sqlite.url, *args])
    assert result.exit_code == 2
    assert message in result.output


def test_help_lists_the_commands() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("worker", "list", "dlq", "show", "retry", "cancel", "stats"):
        assert command in result.output
