"""The give-up rule counts claims without progress: sagaz_sagas.claimed_at and
sagaz_sagas.stalled_claims.

Revision ID: 0003_worker_claims
Revises: 0002_json_text
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_worker_claims"
down_revision = "0002_json_text"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE (no batch mode): SQLite adds these columns in place, and the
    # offline (--sql) mode that Django's migrations use needs no reflection.
    op.add_column("sagaz_sagas", sa.Column("claimed_at", sa.DateTime(timezone=True)))
    op.add_column(
        "sagaz_sagas",
        sa.Column("stalled_claims", sa.Integer(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("sagaz_sagas", "stalled_claims")  # SQLite >= 3.35 drops columns
    op.drop_column("sagaz_sagas", "claimed_at")
