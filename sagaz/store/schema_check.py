"""Is a database ready for this sagaz? The startup check of every web integration.

A database is ready when sagaz's version table (`sagaz_alembic_version`, written by
`sagaz db upgrade` and by Django's `migrate` alike) records the head revision this sagaz
ships - or, with no revision recorded at all, when every one of sagaz's tables exists
with every column this sagaz defines (tables built by `metadata.create_all`, as test
suites do: they match the schema by construction, since migrations and metadata come
from one source).

Anything else - tables missing, another revision, an unversioned table lacking a column -
raises `SchemaNotReadyError`, naming the database (password hidden), the revision found
and the one expected, and the command that fixes it. A database that does not answer
cannot be judged: the check logs one warning and lets the application start (its health
check reports the outage; the worker retries), so a database that comes up after the
application is not a startup failure. Reads only; never creates a table or a SQLite file.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import redact_database_url
from sagaz.errors import SchemaNotReadyError
from sagaz.store import migrations
from sagaz.store.failures import describe_failure
from sagaz.store.schema import metadata
from sagaz.store.urls import missing_sqlite_file

log = logging.getLogger("sagaz.store")

UPGRADE_HINT = "run `sagaz db upgrade`"
"""The fix for a database migrated with sagaz's own command (FastAPI, Flask, the CLI)."""

DJANGO_HINT = "run `python manage.py migrate`"
"""The fix for a Django project (sagaz's tables come from its Django migrations)."""

#: What a check cannot judge: the database did not answer (logged, not raised).
UNREACHABLE = (sa.exc.OperationalError, sa.exc.InterfaceError, OSError)


@dataclass(frozen=True)
class SchemaState:
    """What a database holds of sagaz's schema: whether its version table exists, the
    revision it records, and the columns of each of sagaz's tables that exist."""

    version_table: bool
    revision: str | None
    columns: Mapping[str, frozenset[str]] = field(default_factory=dict)


def expected_columns() -> dict[str, frozenset[str]]:
    """Each of sagaz's tables and the columns this sagaz defines for it."""
    return {table.name: frozenset(table.columns.keys()) for table in metadata.sorted_tables}


def verify_schema(state: SchemaState, *, database: str, fix: str = UPGRADE_HINT) -> None:
    """Raise SchemaNotReadyError unless `state` is ready for this sagaz (see the module's
    docstring); `database` (already password-free) and `fix` go into the message."""
    heads = tuple(migrations.heads())
    expected = ", ".join(heads)
    if state.revision is not None:
        if state.revision in heads:
            return
        raise SchemaNotReadyError(
            f"sagaz's tables in {database} are at revision {state.revision}, this sagaz "
            f"expects {expected}: {fix}",
            database=database,
            found=state.revision,
            expected=heads,
        )
    gaps = missing_parts(state.columns)
    if not gaps:
        return  # unversioned, but complete: built from this sagaz's metadata
    raise SchemaNotReadyError(
        f"sagaz's tables in {database} are not at revision {expected} (found: none; {gaps}): {fix}",
        database=database,
        found=None,
        expected=heads,
    )


def missing_parts(found: Mapping[str, frozenset[str]]) -> str:
    """What of sagaz's tables and columns `found` lacks, on one line ("" when nothing)."""
    missing_tables: list[str] = []
    missing_columns: list[str] = []
    for table, columns in sorted(expected_columns().items()):
        if table not in found:
            missing_tables.append(table)
        else:
            missing_columns.extend(f"{table}.{c}" for c in sorted(columns - found[table]))
    parts = []
    if missing_tables:
        parts.append(f"missing tables: {', '.join(missing_tables)}")
    if missing_columns:
        parts.append(f"missing columns: {', '.join(missing_columns)}")
    return "; ".join(parts)


def read_schema(connection: sa.Connection) -> SchemaState:
    """What `connection`'s database (in its search_path) holds of sagaz's schema."""
    inspector = sa.inspect(connection)
    names = set(inspector.get_table_names())
    columns = {
        table: frozenset(column["name"] for column in inspector.get_columns(table))
        for table in expected_columns()
        if table in names
    }
    version_table = migrations.VERSION_TABLE in names
    revision = migrations.current(connection) if version_table else None
    return SchemaState(version_table=version_table, revision=revision, columns=columns)


def check_schema(target: sa.Engine | str | sa.URL, *, fix: str = UPGRADE_HINT) -> None:
    """Raise SchemaNotReadyError unless the database of `target` (an engine, or a URL -
    sync or async driver - on which a private connection is opened and closed) is ready
    for this sagaz. A database that does not answer is logged, not raised."""
    url = target.url if isinstance(target, sa.Engine) else sa.make_url(target)
    _refuse_missing_sqlite_file(url, fix)
    try:
        if isinstance(target, sa.Engine):
            with target.connect() as connection:
                state = read_schema(connection)
        else:
            state = migrations.run_with_connection(url, read_schema, create_schema=False)
    except UNREACHABLE as error:
        _unreachable(url, error)
        return
    verify_schema(state, database=redact_database_url(url), fix=fix)


async def check_schema_async(engine: AsyncEngine, *, fix: str = UPGRADE_HINT) -> None:
    """`check_schema` through an async engine (the one the application runs on)."""
    _refuse_missing_sqlite_file(engine.url, fix)
    try:
        async with engine.connect() as connection:
            state = await connection.run_sync(read_schema)
    except UNREACHABLE as error:
        _unreachable(engine.url, error)
        return
    verify_schema(state, database=redact_database_url(engine.url), fix=fix)


def _refuse_missing_sqlite_file(url: sa.URL, fix: str) -> None:
    """Connecting to a SQLite file that does not exist would create it, empty."""
    path = missing_sqlite_file(url)
    if path is None:
        return
    heads = tuple(migrations.heads())
    raise SchemaNotReadyError(
        f"there is no database at {path}, so no sagaz tables at revision "
        f"{', '.join(heads)} (found: none): {fix}",
        database=redact_database_url(url),
        found=None,
        expected=heads,
    )


def _unreachable(url: sa.URL, error: BaseException) -> None:
    log.warning(
        "cannot check sagaz's tables in %s (%s); starting anyway",
        redact_database_url(url),
        describe_failure(error),
    )


__all__ = [
    "DJANGO_HINT",
    "UPGRADE_HINT",
    "SchemaNotReadyError",
    "SchemaState",
    "check_schema",
    "check_schema_async",
    "expected_columns",
    "read_schema",
    "verify_schema",
]
