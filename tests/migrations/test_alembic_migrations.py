"""sagaz's migrations produce exactly sagaz/store/schema.py, on PostgreSQL and SQLite, and
undo cleanly; they keep their own version table."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sagaz.store import migrations
from sagaz.store.schema import TABLE_NAMES, metadata
from tests.conftest import DatabaseUrls

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(params=["postgresql", "sqlite"])
def empty(request: pytest.FixtureRequest) -> DatabaseUrls:
    return request.getfixturevalue("pg_empty" if request.param == "postgresql" else "sqlite_empty")  # type: ignore[no-any-return]


def diff(engine: sa.Engine) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": migrations.include_sagaz_objects,
            },
        )
        return list(compare_metadata(context, metadata))


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_produces_exactly_the_schema_and_downgrade_removes_it(empty: DatabaseUrls) -> None:
    engine = empty.sync_engine()
    try:
        with engine.begin() as connection:
            migrations.upgrade(connection)
        assert tables(engine) == {*TABLE_NAMES, migrations.VERSION_TABLE}
        assert diff(engine) == []
        with engine.connect() as connection:
            assert migrations.current(connection) == "0001_initial"
        with engine.begin() as connection:
            migrations.upgrade(connection)  # at head: nothing to do
            migrations.downgrade(connection)
        assert tables(engine) == {migrations.VERSION_TABLE}
        with engine.connect() as connection:
            assert migrations.current(connection) is None
    finally:
        engine.dispose()


def test_the_comparison_would_notice_a_difference(empty: DatabaseUrls) -> None:
    """Guard for the test above: a schema that differs from schema.py is reported."""
    engine = empty.sync_engine()
    try:
        with engine.begin() as connection:
            migrations.upgrade(connection)
            connection.exec_driver_sql("DROP INDEX ix_sagaz_outbox_pending")
            connection.exec_driver_sql("ALTER TABLE sagaz_inbox ADD COLUMN extra INTEGER")
        kinds = {entry[0] if isinstance(entry, tuple) else entry[0][0] for entry in diff(engine)}
        assert {"add_index", "remove_column"} <= kinds
    finally:
        engine.dispose()


def test_upgrade_through_an_async_url(sqlite_empty: DatabaseUrls) -> None:
    migrations.upgrade(sqlite_empty.async_)
    engine = sqlite_empty.sync_engine()
    try:
        assert tables(engine) >= TABLE_NAMES
    finally:
        engine.dispose()


@pytest.mark.parametrize("database", ["postgresql", "sqlite"])
def test_alembic_command_line_from_the_repository_root(
    database: str, request: pytest.FixtureRequest
) -> None:
    urls: DatabaseUrls = request.getfixturevalue(
        "pg_empty" if database == "postgresql" else "sqlite_empty"
    )
    environment = {**os.environ, "SAGAZ_DATABASE_URL": urls.url}
    alembic = [sys.executable, "-m", "alembic"]
    for arguments in (["upgrade", "head"], ["downgrade", "base"], ["upgrade", "head"]):
        completed = subprocess.run(
            [*alembic, *arguments], cwd=ROOT, env=environment, capture_output=True, text=True
        )
        assert completed.returncode == 0, completed.stderr
    engine = urls.sync_engine()
    try:
        assert tables(engine) == {*TABLE_NAMES, migrations.VERSION_TABLE}
        assert diff(engine) == []
    finally:
        engine.dispose()
