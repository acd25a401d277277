"""Running sagaz's migrations from code, and keeping them out of the application's.

sagaz's Alembic environment ships inside the package (`sagaz/migrations`) and records its
state in its own version table, `sagaz_alembic_version`, so it runs from an installed
wheel (no ini file, no checkout) and never touches the application's Alembic history:

    from sagaz.store import migrations
    migrations.upgrade("postgresql://app@db/app")   # or upgrade(connection)

An application with its own Alembic environment passes `include_object=include_object`
(from this module) to `context.configure(...)` in its env.py, so its autogenerate neither
drops nor re-creates sagaz's tables, and may call `upgrade(connection)` there so one
`alembic upgrade head` migrates both (see docs/migrations.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from collections.abc import Callable, Collection, Coroutine, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL

from sagaz.errors import ConfigurationError
from sagaz.store.engines import create_async_engine, create_engine
from sagaz.store.schema import TABLE_NAMES
from sagaz.store.urls import missing_sqlite_file, sync_url

T = TypeVar("T")

VERSION_TABLE = "sagaz_alembic_version"
"""sagaz's own Alembic version table (never the application's `alembic_version`)."""

SCRIPT_LOCATION = "sagaz:migrations"
"""Where the environment and revisions live: a package resource, so installs find it."""

SAGAZ_NAMES = frozenset({*TABLE_NAMES, VERSION_TABLE})
"""Every table sagaz owns: its four tables and its version table."""

Target = str | URL | sa.Connection
"""A database URL (sync or async driver) or an open sync Connection to migrate through."""


# -- filters for autogenerate ---------------------------------------------------------


def _table_name(object_: Any, name: str | None, type_: str) -> str | None:
    if type_ == "table":
        return name
    # columns, indexes and constraints all know their table
    table = getattr(object_, "table", None)
    return getattr(table, "name", None)


def is_sagaz_object(object_: Any, name: str | None, type_: str) -> bool:
    """True for sagaz's tables (and its version table) and their columns, indexes and
    constraints."""
    return _table_name(object_, name, type_) in SAGAZ_NAMES


def include_object(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """Alembic `include_object` hook for an application's env.py: False for sagaz's
    objects, True for everything else.

    With it, the application's autogenerate neither proposes dropping sagaz's tables
    (found in the database, absent from the application's metadata) nor creating them
    (when the application's metadata includes sagaz's). Combine it with a filter of your
    own by calling it from yours: `return include_object(...) and mine(...)`.
    """
    return not is_sagaz_object(object_, name, type_)


def include_name(name: str | None, type_: str, parent_names: Mapping[str, Any]) -> bool:
    """Alembic `include_name` hook (filters before reflection, so sagaz's tables are not
    even inspected): False for sagaz's tables, True for everything else."""
    return not (type_ == "table" and name in SAGAZ_NAMES)


def only_sagaz_objects(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """The opposite filter, for sagaz's own environment: only sagaz's four tables and
    their parts (not the application's tables, nor any version table)."""
    return _table_name(object_, name, type_) in TABLE_NAMES


# -- connections ----------------------------------------------------------------------


def use_schema(connection: sa.Connection, schema: str | None, *, create: bool = True) -> None:
    """Point `connection` at PostgreSQL schema `schema` (created if missing, with
    `create`) for the rest of its life: sagaz's tables and version table are created and
    found there.

    Commits (so Alembic later starts its own transaction). Refused on other databases.
    """
    if schema is None:
        return
    if connection.dialect.name != "postgresql":
        raise ConfigurationError(
            f"a schema ({schema!r}) applies to PostgreSQL only, not {connection.dialect.name}"
        )
    quoted = connection.dialect.identifier_preparer.quote_identifier(schema)
    exists = connection.execute(
        sa.text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": schema}
    ).scalar()
    if create and not exists:
        connection.exec_driver_sql(f"CREATE SCHEMA {quoted}")
    connection.exec_driver_sql(f"SET search_path TO {quoted}")
    connection.commit()
    # What Alembic's inspector takes as "no schema" (read once at first connect).
    connection.dialect.default_schema_name = schema


def run_with_connection(
    url: str | URL,
    function: Callable[[sa.Connection], T],
    *,
    schema: str | None = None,
    create_schema: bool = True,
) -> T:
    """Call `function` with a sync Connection to `url` (in `schema`, see `use_schema`) on
    a private engine, commit what it left open, and dispose of the engine.

    An async URL (postgresql+asyncpg, sqlite+aiosqlite, ...) goes through an AsyncEngine
    and `run_sync`, so only the async driver needs to be installed. From inside a running
    event loop that happens on a helper thread (this call blocks until done).
    """
    sync_url(url)  # raises ConfigurationError unless a valid PostgreSQL or SQLite URL
    parsed = sa.make_url(url)
    if schema is not None and parsed.get_backend_name() != "postgresql":
        raise ConfigurationError(
            f"a schema ({schema!r}) applies to PostgreSQL only, not {parsed.get_backend_name()}"
        )
    if parsed.get_dialect().is_async:
        return _run_coroutine(lambda: _run_async(parsed, function, schema, create_schema))
    engine = create_engine(parsed, poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            use_schema(connection, schema, create=create_schema)
            result = function(connection)
            connection.commit()
            return result
    finally:
        engine.dispose()


async def _run_async(
    url: URL, function: Callable[[sa.Connection], T], schema: str | None, create_schema: bool
) -> T:
    engine = create_async_engine(url, poolclass=sa.NullPool)

    def run(connection: sa.Connection) -> T:
        use_schema(connection, schema, create=create_schema)
        return function(connection)

    try:
        async with engine.connect() as connection:
            result = await connection.run_sync(run)
            await connection.commit()
            return result
    finally:
        await engine.dispose()


def _run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sagaz-migrate") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@contextmanager
def _outer_alembic_context_kept() -> Iterator[None]:
    """Keep an application's Alembic run usable around a nested run of sagaz's.

    Alembic exposes its running environment through module-level proxies (`alembic.context`,
    `alembic.op`); a nested command installs its own and, on exit, removes them, leaving
    the outer env.py without its `context`. Reinstall the outer ones afterwards.
    """
    from alembic import context, op

    outer = [getattr(module, "_proxy", None) for module in (context, op)]
    try:
        yield
    finally:
        for proxy in outer:
            if proxy is not None:
                proxy._install_proxy()


# -- commands -------------------------------------------------------------------------


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An Alembic Config for sagaz's migrations, built in code (no ini file needed).

    With `connection`, the environment migrates through it; without, it reads the URL
    from the `sqlalchemy.url` option or `SAGAZ_DATABASE_URL` (see sagaz/migrations/env.py).
    """
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _migrate(target: Target, schema: str | None, run: Callable[[Config], None]) -> None:
    if isinstance(target, sa.Connection):
        if schema is not None:
            raise ConfigurationError(
                "schema= applies to a URL; a connection is migrated in its own search_path"
            )
        with _outer_alembic_context_kept():
            run(alembic_config(target))
        return
    run_with_connection(target, lambda connection: run(alembic_config(connection)), schema=schema)


def upgrade(target: Target, revision: str = "head", *, schema: str | None = None) -> None:
    """Migrate sagaz's tables up to `revision`; at `head` already, nothing happens.

    `target` is a URL (sync or async driver; sagaz opens and closes its own connection
    and commits) or an open Connection (the migration runs in its transaction: when the
    connection was already in one, the caller commits it). `schema` (PostgreSQL, URL
    only) puts sagaz's tables and version table in that schema, creating it if missing.
    Raises ConfigurationError for an unsupported URL, Alembic's errors for an unknown
    revision, and the database's errors as they come; a failed PostgreSQL migration
    leaves nothing half-done (DDL is transactional there).
    """
    _migrate(target, schema, lambda config: command.upgrade(config, revision))


def downgrade(target: Target, revision: str = "base", *, schema: str | None = None) -> None:
    """Migrate sagaz's tables down to `revision`; `base` drops all of them (and their
    rows). The empty version table stays, as with any Alembic history. Arguments as for
    `upgrade`."""
    _migrate(target, schema, lambda config: command.downgrade(config, revision))


def current(target: Target, *, schema: str | None = None) -> str | None:
    """The sagaz revision the database is at; None before the first upgrade (or after a
    downgrade to base). Reads only; never creates the version table."""

    def read(connection: sa.Connection) -> str | None:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()

    if isinstance(target, sa.Connection):
        if schema is not None:
            raise ConfigurationError(
                "schema= applies to a URL; a connection is read in its own search_path"
            )
        return read(target)
    if missing_sqlite_file(target) is not None:
        return None  # and do not create an empty database file by looking
    return run_with_connection(target, read, schema=schema, create_schema=False)


@functools.cache
def _shipped() -> tuple[tuple[str, ...], frozenset[str]]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(alembic_config())
    return tuple(script.get_heads()), frozenset(r.revision for r in script.walk_revisions())


def heads() -> Collection[str]:
    """The head revision(s) this installed sagaz ships (what `upgrade()` migrates to);
    read once per process."""
    return _shipped()[0]


def known_revisions() -> Collection[str]:
    """Every revision this installed sagaz ships (read once per process)."""
    return _shipped()[1]


__all__ = [
    "SAGAZ_NAMES",
    "SCRIPT_LOCATION",
    "VERSION_TABLE",
    "alembic_config",
    "current",
    "known_revisions",
    "downgrade",
    "heads",
    "include_name",
    "include_object",
    "is_sagaz_object",
    "only_sagaz_objects",
    "run_with_connection",
    "upgrade",
    "use_schema",
]
