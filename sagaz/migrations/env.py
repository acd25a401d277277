"""The Alembic environment for sagaz's tables.

Where the database comes from, first match wins:
1. `config.attributes["connection"]`: a sync Connection handed over by
   `sagaz.store.migrations` (migrate through the caller's own engine and settings);
2. `config.attributes["url"]` or the `sqlalchemy.url` option;
3. the `SAGAZ_DATABASE_URL` environment variable.
An async URL (postgresql+asyncpg, sqlite+aiosqlite, ...) is run through an AsyncEngine.

sagaz keeps its own version table, `sagaz_alembic_version`, so its history never mixes
with the application's, and compares only its own tables.
"""

from __future__ import annotations

import asyncio
import os

from alembic import context
from sqlalchemy import Connection, pool
from sqlalchemy.engine import make_url

from sagaz.store.migrations import VERSION_TABLE, include_sagaz_objects
from sagaz.store.schema import metadata

config = context.config


def configure_and_run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        include_object=include_sagaz_objects,
        compare_type=True,
        compare_server_default=True,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def database_url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    url = url or os.environ.get("SAGAZ_DATABASE_URL")
    if not url:
        raise RuntimeError(
            "no database for sagaz's migrations: set SAGAZ_DATABASE_URL (or pass --url to "
            "`sagaz db upgrade`)"
        )
    return str(url)


def run_offline() -> None:
    context.configure(
        url=database_url(),
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async(url: str) -> None:
    from sagaz.store.engines import create_async_engine

    engine = create_async_engine(url, poolclass=pool.NullPool)
    async with engine.connect() as connection:
        await connection.run_sync(configure_and_run)
        await connection.commit()
    await engine.dispose()


def run_online() -> None:
    given = config.attributes.get("connection")
    if given is not None:
        configure_and_run(given)
        return
    url = database_url()
    if make_url(url).get_dialect().is_async:
        asyncio.run(run_async(url))
        return
    from sagaz.store.engines import create_engine

    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        configure_and_run(connection)
        connection.commit()
    engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
