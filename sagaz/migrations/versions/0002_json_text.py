"""JSON documents as text: PostgreSQL ``json`` instead of ``jsonb``, so numbers read back
exactly as written (JSONB turns -0.0 into 0 and 1e16 into an integer).

SQLite keeps its ``JSON`` columns: sagaz now writes documents there as UTF-8 BLOBs, which
the columns' NUMERIC affinity never converts, and reads rows written before either way.

Revision ID: 0002_json_text
Revises: 0001_initial
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002_json_text"
down_revision = "0001_initial"
branch_labels = None
depends_on = None

#: (table, column, nullable) of every JSON document column.
COLUMNS = (
    ("sagaz_sagas", "context", False),
    ("sagaz_saga_steps", "result", True),
    ("sagaz_outbox", "payload", False),
    ("sagaz_outbox", "headers", False),
)


def upgrade() -> None:
    _convert(postgresql.JSON(none_as_null=True), postgresql.JSONB(none_as_null=True), "json")


def downgrade() -> None:
    _convert(postgresql.JSONB(none_as_null=True), postgresql.JSON(none_as_null=True), "jsonb")


def _convert(to: sa.types.TypeEngine[object], was: sa.types.TypeEngine[object], cast: str) -> None:
    """Change every document column's type to `to` on PostgreSQL (nothing on SQLite)."""
    if op.get_context().dialect.name != "postgresql":
        return
    for table, column, nullable in COLUMNS:
        op.alter_column(
            table,
            column,
            type_=to,
            existing_type=was,
            existing_nullable=nullable,
            postgresql_using=f"{column}::{cast}",
        )
