"""Pure statement builders shared by the session-bound API and the sync and async stores.

Nothing here executes anything: each function returns a SQLAlchemy Core statement (or
plain data) for a dialect, so the sync and async code paths run the very same SQL.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.dml import Insert

#: LISTEN/NOTIFY channels on PostgreSQL.
SAGA_CHANNEL = "sagaz_sagas"
OUTBOX_CHANNEL = "sagaz_outbox"


def insert_ignoring_conflicts(table: sa.Table, dialect: str) -> Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` on PostgreSQL and SQLite."""
    if dialect == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    if dialect == "sqlite":
        return sqlite.insert(table).on_conflict_do_nothing()
    raise NotImplementedError(f"sagaz supports PostgreSQL and SQLite, not {dialect}")


def insert_rows_and_notify(
    table: sa.Table, rows: Sequence[dict[str, Any]], dialect: str, channel: str
) -> sa.Executable:
    """One statement inserting `rows` (conflicts ignored).

    On PostgreSQL the same statement also issues `NOTIFY channel` (the payload is the
    schema the rows went to, so listeners can ignore other schemas) when at least one row
    was inserted; PostgreSQL delivers it only if the transaction commits, and drops it
    with a rolled-back savepoint, so no extra query and no false wake-ups.
    """
    insert = insert_ignoring_conflicts(table, dialect).values(list(rows))
    if dialect != "postgresql":
        return insert
    inserted = insert.returning(table.c.id).cte(f"{table.name}_inserted")
    notify = sa.func.pg_notify(channel, sa.func.current_schema())
    return sa.select(notify).where(sa.exists(sa.select(inserted.c.id)))


#: A group of queued rows that share one table, one set of columns and one channel.
RowGroup = tuple[sa.Table, tuple[str, ...], str]


@functools.lru_cache(maxsize=64)
def postgres_insert_groups(groups: tuple[RowGroup, ...], *, notify: bool) -> sa.TextClause:
    """One PostgreSQL statement inserting every group's rows (conflicts ignored).

    Its shape depends only on `groups` (tables, columns, channels) and `notify`, never on
    how many rows there are, so SQLAlchemy compiles it once (the same object is returned
    for the same arguments) and the drivers can keep it prepared. Each group's rows
    travel as ONE json parameter, ``rows0``, ``rows1``, ... (see `rows_document`),
    expanded with ``json_populate_recordset`` over the table's own row type, so every
    value is converted by its column's type in the database (a ``json`` column keeps the
    document's text exactly, a ``jsonb`` one normalises it as any insert would); rows are
    inserted in list order (the outbox's ``seq`` follows it).

    Without `notify` the statement returns ``current_schema()`` in one row when at least
    one row was inserted (a repeated idempotent start inserts nothing), else no row. With
    `notify` it issues, in one row, ``NOTIFY channel`` (payload: the current schema) for
    each group that inserted a row; PostgreSQL delivers it only if the transaction
    commits.
    """
    preparer = _POSTGRES.identifier_preparer
    parts, inserted, notifies = [], [], []
    for index, (table, columns, channel) in enumerate(groups):
        name = preparer.format_table(table)
        column_list = ", ".join(preparer.quote(table.c[column].name) for column in columns)
        values = ", ".join(_selected(table.c[column], preparer) for column in columns)
        parts.append(
            f"w{index} AS (INSERT INTO {name} ({column_list}) SELECT {values} "
            f"FROM json_populate_recordset(CAST(NULL AS {name}), CAST(:rows{index} AS json)) "
            "WITH ORDINALITY AS r ORDER BY r.ordinality ON CONFLICT DO NOTHING RETURNING 1)"
        )
        inserted.append(f"EXISTS (SELECT FROM w{index})")
        literal = "'" + channel.replace("'", "''") + "'"
        notifies.append(f"CASE WHEN {inserted[-1]} THEN pg_notify({literal}, current_schema()) END")
    if notify:
        final = f"SELECT {', '.join(notifies)}"
    else:
        final = f"SELECT current_schema() WHERE {' OR '.join(inserted)}"
    return sa.text(f"WITH {', '.join(parts)} {final}")


def _selected(column: sa.Column[Any], preparer: Any) -> str:
    """A column as the statement selects it from the expanded rows: a JSON document
    column that stores None as JSON ``null`` gets ``null`` back where the expansion made
    SQL NULL of it (``json_populate_recordset`` turns a JSON null value into SQL NULL)."""
    name = str(preparer.quote(column.name))
    if getattr(column.type, "json_null", False):
        # an untyped literal takes the column's own type (json, or jsonb before 0002)
        return f"COALESCE({name}, 'null')"
    return name


def rows_document(rows: Sequence[Mapping[str, Any]]) -> str:
    """`rows` as the JSON text `postgres_insert_groups` expands: values of JSON columns
    nested as they are (floats as Python writes them, e.g. ``-0.0``, ``1e+16``),
    datetimes in ISO 8601 with their offset, UUIDs as text."""
    return _ROWS_ENCODER.encode(rows)


def _encode_other(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    raise TypeError(f"a {type(value).__name__} cannot be written as a sagaz column value")


_POSTGRES = postgresql.dialect()  # type: ignore[no-untyped-call]
_ROWS_ENCODER = json.JSONEncoder(
    ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=_encode_other
)


@functools.lru_cache(maxsize=64)
def sqlite_insert(table: sa.Table, dialect: str = "sqlite") -> Insert:
    """`insert_ignoring_conflicts` for `table`, built once per table so SQLAlchemy's
    compiled cache serves every later unit of work (executed with a list of rows: one
    executemany). NotImplementedError for a dialect other than SQLite or PostgreSQL."""
    return insert_ignoring_conflicts(table, dialect)
