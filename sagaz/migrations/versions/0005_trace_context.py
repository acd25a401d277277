"""The W3C trace context of the request that started a saga: sagaz_sagas.trace_context.

Revision ID: 0005_trace_context
Revises: 0004_cancel_requests
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

#: A JSON document column as 0002 left them: ``json`` on PostgreSQL, ``JSON`` on SQLite.
JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSON(none_as_null=True), "postgresql")

revision = "0005_trace_context"
down_revision = "0004_cancel_requests"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, as in 0003 and 0004: in place on SQLite, and fit for offline mode.
    op.add_column("sagaz_sagas", sa.Column("trace_context", JSON))


def downgrade() -> None:
    op.drop_column("sagaz_sagas", "trace_context")
