"""Pure statement builders shared by the session-bound API and the sync and async stores.

Nothing here executes anything: each function returns a SQLAlchemy Core statement (or
plain data) for a dialect, so the sync and async code paths run the very same SQL.
"""

from __future__ import annotations

from collections.abc import Sequence
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
