"""sagaz's migrations produce exactly sagaz/store/schema.py, on PostgreSQL and SQLite, undo
cleanly, keep their own version table, and run through sync and async URLs, from code and
from the `alembic` command at the repository root."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sagaz.errors import ConfigurationError
from sagaz.store import migrations
from sagaz.store.schema import TABLE_NAMES, metadata
from tests.conftest import DatabaseUrls

ROOT = Path(__file__).resolve().parents[2]
HEAD = "0005_trace_context"


@pytest.fixture(params=["postgresql", "sqlite"])
def empty(request: pytest.FixtureRequest) -> DatabaseUrls:
    return request.getfixturevalue("pg_empty" if request.param == "postgresql" else "sqlite_empty")  # type: ignore[no-any-return]


def autogenerate_diff(engine: sa.Engine) -> list[Any]:
    """What `alembic revision --autogenerate` would write to turn the database into
    schema.py: tables, columns, types (JSONB vs JSON included), nullability, server
    defaults, indexes, unique and foreign keys. Only sagaz's own tables are compared (the
    version table is not in the metadata)."""
    with engine.connect() as connection:
        context = MigrationContext.configure(
            connection,
            opts={
                "compare_type": True,
                "compare_server_default": True,
                "include_object": migrations.only_sagaz_objects,
            },
        )
        return list(compare_metadata(context, metadata))


def reflected(engine: sa.Engine) -> dict[str, Any]:
    """Everything the database says about sagaz's tables, as plain values.

    Autogenerate does not compare an index's WHERE clause (a partial index whose predicate
    changed, or that lost it, compares equal), so this reflection - predicates included,
    in the database's own normalised spelling - is compared with that of `create_all`.
    """
    inspector = sa.inspect(engine)
    snapshot: dict[str, Any] = {}
    for table in sorted(TABLE_NAMES):
        snapshot[table] = {
            "columns": [
                {key: str(value) for key, value in column.items() if key != "comment"}
                for column in inspector.get_columns(table)
            ],
            "primary_key": inspector.get_pk_constraint(table),
            "foreign_keys": inspector.get_foreign_keys(table),
            "unique": sorted(inspector.get_unique_constraints(table), key=lambda u: u["name"]),
            "checks": inspector.get_check_constraints(table),
            "indexes": sorted(
                (
                    index["name"],
                    tuple(index["column_names"]),
                    bool(index["unique"]),
                    {k: str(v) for k, v in index.get("dialect_options", {}).items()},
                )
                for index in inspector.get_indexes(table)
            ),
        }
    return snapshot


@pytest.fixture
def created_by_metadata(empty: DatabaseUrls, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The reflection of what `metadata.create_all` makes, on the same kind of database."""
    if empty.dialect == "sqlite":
        path = tmp_path / "reference.db"
        reference = DatabaseUrls(
            sync=f"sqlite:///{path}", async_=f"sqlite+aiosqlite:///{path}", dialect="sqlite"
        )
    else:
        reference = dataclasses.replace(empty, schema=f"{empty.schema}_ref")
        admin = empty.sync_engine()
        with admin.begin() as connection:
            connection.exec_driver_sql(f'CREATE SCHEMA "{reference.schema}"')
    engine = reference.sync_engine()
    try:
        metadata.create_all(engine)
        yield reflected(engine)
    finally:
        engine.dispose()
        if empty.dialect == "postgresql":
            with admin.begin() as connection:
                connection.exec_driver_sql(f'DROP SCHEMA "{reference.schema}" CASCADE')
            admin.dispose()


def tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def upgrade_args(urls: DatabaseUrls) -> tuple[str, dict[str, Any]]:
    """A plain URL plus schema= on PostgreSQL (the schema option's own path); the file
    URL on SQLite."""
    if urls.dialect == "postgresql":
        return urls.sync, {"schema": urls.schema}
    return urls.sync, {}


def test_upgrade_produces_exactly_the_schema(
    empty: DatabaseUrls, created_by_metadata: dict[str, Any]
) -> None:
    url, options = upgrade_args(empty)
    assert migrations.current(url, **options) is None
    migrations.upgrade(url, **options)
    engine = empty.sync_engine()
    try:
        assert tables(engine) == {*TABLE_NAMES, migrations.VERSION_TABLE}
        assert autogenerate_diff(engine) == []
        assert reflected(engine) == created_by_metadata
    finally:
        engine.dispose()
    assert migrations.current(url, **options) == HEAD
    assert set(migrations.heads()) == {HEAD}


def test_the_comparisons_notice_differences(
    empty: DatabaseUrls, created_by_metadata: dict[str, Any]
) -> None:
    """Guard for the test above: schemas that differ from schema.py are reported."""
    url, options = upgrade_args(empty)
    migrations.upgrade(url, **options)
    engine = empty.sync_engine()
    try:
        with engine.begin() as connection:
            connection.exec_driver_sql("DROP INDEX ix_sagaz_outbox_pending_key")
            connection.exec_driver_sql("ALTER TABLE sagaz_inbox ADD COLUMN extra INTEGER")
        kinds = {entry[0] for entry in autogenerate_diff(engine) if isinstance(entry, tuple)}
        assert {"add_index", "remove_column"} <= kinds

        # A partial index whose predicate changed: autogenerate is blind to it ...
        with engine.begin() as connection:
            connection.exec_driver_sql("ALTER TABLE sagaz_inbox DROP COLUMN extra")
            connection.exec_driver_sql("DROP INDEX ix_sagaz_outbox_pending")
            connection.exec_driver_sql(
                "CREATE INDEX ix_sagaz_outbox_pending ON sagaz_outbox (next_attempt_at, seq) "
                "WHERE status = 'dead'"
            )
            connection.exec_driver_sql(
                "CREATE INDEX ix_sagaz_outbox_pending_key ON sagaz_outbox (key, seq)"
            )
        assert autogenerate_diff(engine) == []
        # ... the reflection comparison is not.
        snapshot = reflected(engine)
        assert snapshot != created_by_metadata
        snapshot["sagaz_outbox"]["indexes"] = created_by_metadata["sagaz_outbox"]["indexes"]
        assert snapshot == created_by_metadata

        if empty.dialect == "postgresql":
            with engine.begin() as connection:
                connection.exec_driver_sql("ALTER TABLE sagaz_sagas ALTER context TYPE jsonb")
            (change,) = autogenerate_diff(engine)
            assert change[0][0] == "modify_type"
            assert change[0][3] == "context"
    finally:
        engine.dispose()


def test_downgrade_to_base_drops_every_sagaz_table(empty: DatabaseUrls) -> None:
    url, options = upgrade_args(empty)
    migrations.upgrade(url, **options)
    migrations.upgrade(url, **options)  # at head: nothing to do
    migrations.downgrade(url, **options)
    engine = empty.sync_engine()
    try:
        # Alembic keeps its (now empty) version table, as for any history.
        assert tables(engine) == {migrations.VERSION_TABLE}
    finally:
        engine.dispose()
    assert migrations.current(url, **options) is None
    migrations.upgrade(url, **options)  # and back up
    assert migrations.current(url, **options) == HEAD


def test_upgrade_and_downgrade_through_a_callers_connection(empty: DatabaseUrls) -> None:
    """On the caller's connection and inside its transaction: its search_path (the test
    schema on PostgreSQL) and its commit decide."""
    engine = empty.sync_engine()
    try:
        with engine.connect() as connection, connection.begin():
            migrations.upgrade(connection)
            assert migrations.current(connection) == HEAD
        if empty.dialect == "postgresql":
            # transactional DDL: a rolled-back downgrade leaves the tables in place
            with engine.connect() as connection:
                connection.begin()
                migrations.downgrade(connection)
                assert not TABLE_NAMES & set(sa.inspect(connection).get_table_names())
                connection.rollback()
            assert tables(engine) >= TABLE_NAMES
        with engine.begin() as connection:
            migrations.downgrade(connection)
        assert not TABLE_NAMES & tables(engine)
    finally:
        engine.dispose()


@pytest.mark.parametrize("dialect", ["postgresql", "sqlite"])
async def test_async_urls_run_through_an_async_engine_even_inside_a_running_loop(
    dialect: str, request: pytest.FixtureRequest
) -> None:
    urls: DatabaseUrls = request.getfixturevalue(
        f"{'pg' if dialect == 'postgresql' else 'sqlite'}_empty"
    )
    # postgresql+asyncpg cannot carry a search_path in its URL: schema= does it.
    options = {"schema": urls.schema} if dialect == "postgresql" else {}
    migrations.upgrade(urls.async_, **options)  # this test's event loop is running
    assert migrations.current(urls.async_, **options) == HEAD
    engine = urls.sync_engine()
    try:
        assert tables(engine) >= TABLE_NAMES
        assert autogenerate_diff(engine) == []
    finally:
        engine.dispose()
    migrations.downgrade(urls.async_, **options)
    assert migrations.current(urls.async_, **options) is None


def test_schema_is_created_when_missing(pg_empty: DatabaseUrls) -> None:
    schema = f"{pg_empty.schema}_new"
    assert migrations.current(pg_empty.sync, schema=schema) is None  # looks, creates nothing
    try:
        migrations.upgrade(pg_empty.sync, schema=schema)
        engine = dataclasses.replace(pg_empty, schema=schema).sync_engine()
        try:
            assert tables(engine) == {*TABLE_NAMES, migrations.VERSION_TABLE}
        finally:
            engine.dispose()
        assert migrations.current(pg_empty.sync, schema=schema) == HEAD
        assert migrations.current(pg_empty.url) is None  # the test schema itself is empty
    finally:
        admin = sa.create_engine(pg_empty.sync)
        with admin.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


def test_bad_arguments_are_refused_before_anything_is_written(
    sqlite_empty: DatabaseUrls, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="PostgreSQL only"):
        migrations.upgrade(sqlite_empty.sync, schema="sagaz")
    with pytest.raises(ConfigurationError, match="sagaz supports postgresql and sqlite"):
        migrations.upgrade("mysql://localhost/app")
    with pytest.raises(ConfigurationError, match="not a valid SQLAlchemy URL"):
        migrations.upgrade("not a url")
    assert list(tmp_path.iterdir()) == []  # not even an empty SQLite file
    assert migrations.current(sqlite_empty.sync) is None
    assert list(tmp_path.iterdir()) == []


def alembic(*arguments: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    completed = subprocess.run(
        [sys.executable, "-m", "alembic", *arguments],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed


@pytest.mark.parametrize(
    "variant", ["sqlite", "sqlite+aiosqlite", "postgresql+psycopg", "postgresql+asyncpg"]
)
def test_alembic_command_line_from_the_repository_root(
    variant: str, request: pytest.FixtureRequest
) -> None:
    urls: DatabaseUrls = request.getfixturevalue(
        f"{'pg' if 'postgresql' in variant else 'sqlite'}_empty"
    )
    if variant == "sqlite":
        env = {"SAGAZ_DATABASE_URL": urls.sync}
    elif variant == "sqlite+aiosqlite":
        env = {"SAGAZ_DATABASE_URL": urls.async_}
    elif variant == "postgresql+psycopg":
        env = {"SAGAZ_DATABASE_URL": urls.url}  # search_path in the URL's options
    else:
        env = {"SAGAZ_DATABASE_URL": urls.async_, "SAGAZ_DATABASE_SCHEMA": str(urls.schema)}
    engine = urls.sync_engine()
    try:
        alembic("upgrade", "head", env=env)
        assert tables(engine) == {*TABLE_NAMES, migrations.VERSION_TABLE}
        assert autogenerate_diff(engine) == []
        assert HEAD in alembic("current", env=env).stdout
        alembic("downgrade", "base", env=env)
        assert tables(engine) == {migrations.VERSION_TABLE}
    finally:
        engine.dispose()


def test_alembic_offline_sql_script() -> None:
    """`alembic upgrade head --sql` writes the DDL without a database."""
    script = alembic(
        "upgrade", "head", "--sql", env={"SAGAZ_DATABASE_URL": "postgresql://nowhere/x"}
    ).stdout
    assert "CREATE TABLE sagaz_sagas" in script
    assert "JSONB" in script  # 0001_initial
    assert "ALTER COLUMN payload TYPE JSON USING payload::json" in script  # 0002_json_text
    assert "WHERE status = 'pending'" in script
    assert "INSERT INTO sagaz_alembic_version" in script
