"""`sagaz dlq list|requeue` and `sagaz list --instances` on a database they cannot use: a
bad URL, a SQLite file that does not exist (never created), a database without sagaz's
tables, a server that does not answer - each a one-line error, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sagaz.cli import main
from tests.conftest import DatabaseUrls

COMMANDS = [
    pytest.param(["dlq", "list"], id="dlq-list"),
    pytest.param(["dlq", "requeue", "--all"], id="dlq-requeue"),
    pytest.param(["list", "--instances"], id="list-instances"),
    pytest.param(["list", "--status", "failed"], id="list-status"),
]


@pytest.fixture(autouse=True)
def no_database_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SAGAZ_DATABASE_URL", raising=False)


def run(args: list[str]) -> Result:
    # catch_exceptions=False: an exception that escapes click (a traceback) fails the test.
    return CliRunner().invoke(main, args, catch_exceptions=False)


def assert_one_line_error(result: Result, fragment: str, exit_code: int) -> None:
    assert result.exit_code == exit_code, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("nope", "--url is not a valid SQLAlchemy URL (dialect+driver://"),
        ("postgresql://app:secret@db:port/app", "--url is not a valid SQLAlchemy URL"),
        ("mysql://app@db/app", "sagaz supports postgresql and sqlite, not mysql"),
    ],
)
def test_a_bad_url_is_a_usage_error(command: list[str], url: str, fragment: str) -> None:
    result = run([*command, "--url", url])
    assert_one_line_error(result, fragment, exit_code=2)
    assert "secret" not in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_without_a_url_nothing_is_created(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(command)  # no --url, no SAGAZ_DATABASE_URL: no default database
    assert_one_line_error(result, "no database given: pass --url or SAGAZ_DATABASE_URL", 2)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", COMMANDS)
def test_a_database_without_sagaz_tables_says_to_upgrade(
    command: list[str], pg_empty: DatabaseUrls
) -> None:
    result = run([*command, "--url", pg_empty.url])
    assert_one_line_error(result, "sagaz's tables do not exist in", exit_code=1)
    assert "run `sagaz db upgrade`" in result.output


@pytest.mark.parametrize("command", COMMANDS)
def test_a_sqlite_file_without_sagaz_tables_says_to_upgrade(
    command: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "app.db"
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE unrelated (id INTEGER)"))
    engine.dispose()
    result = run([*command, "--url", f"sqlite:///{path}"])
    assert_one_line_error(result, "sagaz's tables do not exist in", exit_code=1)


def test_a_database_that_does_not_answer() -> None:
    url = "postgresql://nobody:secret@127.0.0.1:1/none?connect_timeout=2"
    result = run(["dlq", "list", "--url", url])
    assert_one_line_error(result, "database error at postgresql://nobody:***@127.0.0.1:1", 1)
    assert "secret" not in result.output


def test_an_existing_database_still_works(sqlite: DatabaseUrls) -> None:
    assert run(["dlq", "list", "--url", sqlite.url]).exit_code == 0
    assert run(["list", "--instances", "--url", sqlite.url]).exit_code == 0
    assert run(["dlq", "requeue", "--all", "--url", sqlite.url]).output == "re-queued 0 event(s)\n"
