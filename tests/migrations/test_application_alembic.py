"""An application's own Alembic environment next to sagaz's tables: with
`exclude_sagaz_objects` its autogenerate neither drops nor re-creates them, and sagaz's
migrations can run from the application's env.py through the same connection."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sagaz.store import migrations
from sagaz.store.schema import TABLE_NAMES
from tests.conftest import DatabaseUrls

app_metadata = sa.MetaData()
sa.Table("orders", app_metadata, sa.Column("id", sa.Integer, primary_key=True))
sa.Table("customers", app_metadata, sa.Column("id", sa.Integer, primary_key=True))


def app_diff(engine: sa.Engine, **options: Any) -> list[Any]:
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts=options)
        return list(compare_metadata(context, app_metadata))


def touched_tables(entries: list[Any]) -> set[str]:
    names: set[str] = set()
    for entry in entries:
        for item in entry if isinstance(entry, list) else [entry]:
            for part in item[1:]:
                name = getattr(part, "name", None)
                table = getattr(getattr(part, "table", None), "name", None)
                names.update(n for n in (name, table) if isinstance(n, str))
    return names


def test_application_autogenerate_ignores_sagaz_tables(db: DatabaseUrls) -> None:
    engine = db.sync_engine()
    try:
        with engine.begin() as connection:
            # sagaz's tables exist already (fixture); the app's `orders` table exists too.
            app_metadata.tables["orders"].create(connection)
        unfiltered = touched_tables(app_diff(engine))
        assert unfiltered >= TABLE_NAMES  # without the hook it would drop sagaz's tables
        filtered = app_diff(engine, include_object=migrations.exclude_sagaz_objects)
        assert not TABLE_NAMES & touched_tables(filtered)
        assert [entry[0] for entry in filtered] == ["add_table"]  # only the app's own change
        assert filtered[0][1].name == "customers"
    finally:
        engine.dispose()


def test_sagaz_migrations_from_an_application_env_through_its_connection(
    sqlite_empty: DatabaseUrls,
) -> None:
    """What an application's env.py does: run sagaz's upgrade on the connection it has,
    then its own migrations; both histories live side by side."""
    engine = sqlite_empty.sync_engine()
    try:
        with engine.begin() as connection:
            migrations.upgrade(connection)
            app_metadata.create_all(connection)
        names = set(sa.inspect(engine).get_table_names())
        assert {*TABLE_NAMES, "orders", "customers", migrations.VERSION_TABLE} <= names
        assert "alembic_version" not in names  # sagaz never writes the app's version table
    finally:
        engine.dispose()
