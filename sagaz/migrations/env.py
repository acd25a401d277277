"""The Alembic environment for sagaz's tables.

Where the database comes from, first match wins:
1. `config.attributes["connection"]`: an open sync Connection, handed over by
   `sagaz.store.migrations` (upgrade/downgrade with a URL or a connection, and
   `sagaz db ...`);
2. the `sqlalchemy.url` option, then the `SAGAZ_DATABASE_URL` environment variable (for
   `alembic upgrade head` run from a checkout with the root alembic.ini). A sync or async
   URL; an async one runs through an AsyncEngine. `-x schema=NAME` or
   `SAGAZ_DATABASE_SCHEMA` puts the tables in that PostgreSQL schema.

sagaz keeps its own version table, `sagaz_alembic_version`, so its history never mixes
with the application's, and autogenerate compares only sagaz's own tables.
"""

from __future__ import annotations

import os

from alembic import context
from alembic.util import CommandError
from sqlalchemy import Connection

from sagaz.store.migrations import VERSION_TABLE, only_sagaz_objects, run_with_connection
from sagaz.store.schema import metadata

config = context.config


def configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=only_sagaz_objects,
        compare_type=True,
        compare_server_default=True,
        # SQLite alters tables by copying them; later revisions need batch mode there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = config.get_main_option("sqlalchemy.url") or os.environ.get("SAGAZ_DATABASE_URL")
    if not url:
        raise CommandError(  # the alembic command prints it as one line
            "no database for sagaz's migrations: set SAGAZ_DATABASE_URL (or use "
            "`sagaz db upgrade --url URL`)"
        )
    return url


def schema() -> str | None:
    return context.get_x_argument(as_dictionary=True).get("schema") or (
        os.environ.get("SAGAZ_DATABASE_SCHEMA") or None
    )


def run_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        name = schema()
        if name is not None:
            quoted = name.replace('"', '""')
            context.execute(f'SET search_path TO "{quoted}"')
        context.run_migrations()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        configure_and_run(given)
    else:
        run_with_connection(database_url(), configure_and_run, schema=schema())


if context.is_offline_mode():
    run_offline()
else:
    run_online()
