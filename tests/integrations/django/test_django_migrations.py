"""`manage.py migrate` builds exactly the tables `sagaz db upgrade` builds - columns,
types, nullability, keys, indexes with their partial-index predicates, and the version
table - on PostgreSQL and SQLite; the two tools agree on what was applied."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.util import CommandError
from click.testing import CliRunner
from django.core.management import call_command
from django.db import connections

from sagaz.cli import main as sagaz_cli
from sagaz.integrations.django.conf import database_url
from sagaz.integrations.django.operations import revision_sql
from sagaz.store import migrations
from sagaz.store.engines import create_engine
from sagaz.store.schema import TABLE_NAMES
from tests.conftest import DatabaseUrls
from tests.migrations.test_alembic_migrations import autogenerate_diff, reflected


def snapshot(url: str) -> dict[str, Any]:
    """sagaz's tables as the database describes them, plus its version table."""
    engine = create_engine(url, poolclass=sa.NullPool)
    try:
        tables = reflected(engine)
        inspector = sa.inspect(engine)
        version = migrations.VERSION_TABLE
        tables[version] = {
            "columns": [
                {key: str(value) for key, value in column.items() if key != "comment"}
                for column in inspector.get_columns(version)
            ],
            "primary_key": inspector.get_pk_constraint(version),
        }
        with engine.connect() as connection:
            tables[version]["rows"] = connection.exec_driver_sql(
                f"SELECT version_num FROM {version}"
            ).all()
        assert autogenerate_diff(engine) == []
        return tables
    finally:
        engine.dispose()


def sagaz_db_upgrade(*args: str) -> None:
    result = CliRunner().invoke(sagaz_cli, ["db", "upgrade", *args])
    assert result.exit_code == 0, result.output


@pytest.mark.django_db(transaction=True)
def test_migrate_matches_sagaz_db_upgrade_on_postgresql(pg_empty: DatabaseUrls) -> None:
    migrated = snapshot(database_url("default"))  # `migrate` ran at session start
    sagaz_db_upgrade("--url", pg_empty.sync, "--schema", str(pg_empty.schema))
    upgraded = snapshot(pg_empty.url)
    assert set(migrated) == {*TABLE_NAMES, migrations.VERSION_TABLE}
    assert migrated == upgraded
    # the partial indexes kept their predicates
    indexes = {index[0]: index for index in migrated["sagaz_outbox"]["indexes"]}
    assert "status" in str(indexes["ix_sagaz_outbox_pending_key"])
    assert migrations.current(database_url("default")) == "0005_trace_context"


@pytest.mark.django_db(transaction=True, databases=["sqlite"])
def test_migrate_matches_sagaz_db_upgrade_on_sqlite(tmp_path: Path) -> None:
    reference = f"sqlite:///{tmp_path / 'upgraded.db'}"
    sagaz_db_upgrade("--url", reference)
    assert snapshot(database_url("sqlite")) == snapshot(reference)


@pytest.fixture
def scratch() -> Iterator[str]:
    """The empty "scratch" SQLite database; emptied again afterwards."""
    path = Path(connections["scratch"].settings_dict["NAME"])
    connections["scratch"].close()
    path.unlink(missing_ok=True)
    yield f"sqlite:///{path}"
    connections["scratch"].close()
    path.unlink(missing_ok=True)


def applied(alias: str) -> list[str]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT name FROM django_migrations WHERE app = 'sagaz' ORDER BY id")
        return [row[0] for row in cursor.fetchall()]


@pytest.mark.django_db(transaction=True, databases=["scratch"])
def test_migrate_backwards_and_forwards_and_adopting_sagaz_db_upgrade(scratch: str) -> None:
    call_command("migrate", "sagaz", database="scratch", verbosity=0)
    assert migrations.current(scratch) == "0005_trace_context"
    call_command("migrate", "sagaz", "zero", database="scratch", verbosity=0)
    assert migrations.current(scratch) is None
    assert not set(sa.inspect(create_engine(scratch)).get_table_names()) & TABLE_NAMES
    # again, over the empty version table a downgrade leaves behind
    call_command("migrate", "sagaz", database="scratch", verbosity=0)
    assert migrations.current(scratch) == "0005_trace_context"

    # A database `sagaz db upgrade` migrated first: `migrate` records it, changes nothing.
    call_command("migrate", "sagaz", "zero", database="scratch", verbosity=0)
    sagaz_db_upgrade("--url", scratch)
    before = snapshot(scratch)
    call_command("migrate", "sagaz", database="scratch", verbosity=0)
    assert applied("scratch") == [
        "0001_initial",
        "0002_json_text",
        "0003_worker_claims",
        "0004_cancel_requests",
        "0005_trace_context",
    ]
    assert snapshot(scratch) == before


@pytest.mark.django_db(transaction=True, databases=["scratch"])
def test_sqlmigrate_shows_the_alembic_revisions_sql(scratch: str) -> None:
    out = io.StringIO()
    call_command("sqlmigrate", "sagaz", "0001", database="scratch", stdout=out)
    sql = out.getvalue()
    assert "CREATE TABLE sagaz_sagas" in sql
    assert "WHERE status = 'pending' AND key IS NOT NULL" in sql
    assert "INSERT INTO sagaz_alembic_version" in sql


@pytest.mark.parametrize("vendor", ["postgresql", "sqlite"])
def test_revision_sql_leaves_the_transaction_and_search_path_to_django(
    vendor: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sagaz's environment honours SAGAZ_DATABASE_SCHEMA with a SET search_path in
    # offline mode; inside Django's migration it would move the connection elsewhere.
    monkeypatch.setenv("SAGAZ_DATABASE_SCHEMA", "elsewhere")
    up = revision_sql(vendor, start=None, end="0001_initial")
    down = revision_sql(vendor, start="0001_initial", end="base")
    for statement in (*up, *down):
        assert statement.split()[0].upper() in {"CREATE", "INSERT", "DROP", "DELETE"}
        assert not statement.endswith(";")
        assert "elsewhere" not in statement
    created = [s.split()[2] for s in up if s.startswith("CREATE TABLE ")]
    assert created[0] == migrations.VERSION_TABLE
    assert set(created[1:]) == TABLE_NAMES
    assert up[-1].startswith(f"INSERT INTO {migrations.VERSION_TABLE} ")
    assert {s.removeprefix("DROP TABLE ") for s in down[:-1]} == TABLE_NAMES
    assert down[-1].startswith(f"DELETE FROM {migrations.VERSION_TABLE} ")
    assert revision_sql(vendor, start="0001_initial", end="0001_initial") == []


def test_revision_sql_refuses_other_vendors_and_unknown_revisions() -> None:
    with pytest.raises(ValueError, match="not Django's 'mysql'"):
        revision_sql("mysql", start=None, end="0001_initial")
    with pytest.raises(CommandError, match="no_such_revision"):
        revision_sql("sqlite", start=None, end="no_such_revision")
