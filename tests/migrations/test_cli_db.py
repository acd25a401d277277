"""`sagaz db upgrade|current|downgrade` through click."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result

from sagaz.cli import main
from sagaz.store import migrations
from sagaz.store.schema import TABLE_NAMES
from tests.conftest import DatabaseUrls

HEAD = "0005_trace_context"


def invoke(*args: str, **kwargs: Any) -> Result:
    return CliRunner().invoke(main, ["db", *args], catch_exceptions=False, **kwargs)


@pytest.fixture(params=["postgresql", "sqlite"])
def empty(request: pytest.FixtureRequest) -> DatabaseUrls:
    return request.getfixturevalue("pg_empty" if request.param == "postgresql" else "sqlite_empty")  # type: ignore[no-any-return]


def url_args(urls: DatabaseUrls) -> list[str]:
    """On PostgreSQL a plain URL plus --schema (the URL alone would reach `public`)."""
    if urls.dialect == "postgresql":
        return ["--url", urls.sync, "--schema", str(urls.schema)]
    return ["--url", urls.sync]


def sagaz_tables(urls: DatabaseUrls) -> set[str]:
    engine = urls.sync_engine()
    try:
        return TABLE_NAMES & set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_upgrade_current_downgrade(empty: DatabaseUrls) -> None:
    args = url_args(empty)
    result = invoke("current", *args)
    assert result.exit_code == 0
    assert result.output.startswith("none")
    assert invoke("current", "--check", *args).exit_code == 1

    result = invoke("upgrade", *args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"sagaz tables at {HEAD} (head)"
    assert sagaz_tables(empty) == TABLE_NAMES
    assert invoke("upgrade", *args).exit_code == 0  # again: nothing to do

    result = invoke("current", "--check", *args)
    assert (result.exit_code, result.output.strip()) == (0, f"{HEAD} (head)")

    result = invoke("downgrade", *args, input="n\n")  # base drops data: asks first
    assert result.exit_code == 1
    assert "Drop sagaz's tables" in result.output
    assert sagaz_tables(empty) == TABLE_NAMES

    result = invoke("downgrade", *args, input="y\n")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1].startswith("sagaz tables at none")
    assert sagaz_tables(empty) == set()

    assert invoke("upgrade", *args).exit_code == 0
    assert invoke("downgrade", "--yes", *args).exit_code == 0
    assert sagaz_tables(empty) == set()


def test_url_and_schema_come_from_the_environment(pg_empty: DatabaseUrls) -> None:
    env = {"SAGAZ_DATABASE_URL": pg_empty.async_, "SAGAZ_DATABASE_SCHEMA": str(pg_empty.schema)}
    result = invoke("upgrade", env=env)  # postgresql+asyncpg: through an AsyncEngine
    assert result.exit_code == 0, result.output
    assert sagaz_tables(pg_empty) == TABLE_NAMES
    assert invoke("current", env=env).output.strip() == f"{HEAD} (head)"


@pytest.mark.parametrize("command", [["upgrade"], ["current"], ["downgrade", "--yes"]])
def test_there_is_no_default_url(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SAGAZ_DATABASE_URL", raising=False)
    monkeypatch.delenv("SAGAZ_DATABASE_SCHEMA", raising=False)
    result = invoke(*command)
    assert result.exit_code == 2, result.output
    assert "Error: no database given: pass --url or SAGAZ_DATABASE_URL" in result.output
    assert list(tmp_path.iterdir()) == []  # no sagaz.db


def test_an_explicit_sqlite_file_is_created_by_upgrade(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///sagaz.db"  # given explicitly: that file is meant
    assert invoke("current", "--url", url).output.startswith("none")
    assert not (tmp_path / "sagaz.db").exists()  # looking creates nothing
    assert invoke("upgrade", "--url", url).exit_code == 0
    assert migrations.current(f"sqlite:///{tmp_path / 'sagaz.db'}") == HEAD


def test_errors_are_one_line_messages(sqlite_empty: DatabaseUrls) -> None:
    for args, message in [
        (["upgrade", "--url", "mysql://x/y"], "sagaz supports postgresql and sqlite"),
        (["upgrade", "--url", sqlite_empty.sync, "--schema", "s"], "PostgreSQL only"),
        (["upgrade", "--url", sqlite_empty.sync, "--revision", "nope"], "nope"),
    ]:
        result = invoke(*args)
        assert result.exit_code == 1, result.output
        assert result.output.startswith("Error: ")
        assert message in result.output
        assert "Traceback" not in result.output


def test_main_lists_the_db_group() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert "db" in result.output
    result = CliRunner().invoke(main, ["db", "--help"])
    for command in ("upgrade", "downgrade", "current"):
        assert command in result.output
