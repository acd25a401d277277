"""The give-up rule counts claims without progress: sagaz_sagas.claimed_at and
sagaz_sagas.stalled_claims.

Revision ID: 0004_worker_claims
Revises: 0001_initial
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_worker_claims"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sagaz_sagas") as batch:
        batch.add_column(sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(
            sa.Column("stalled_claims", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table("sagaz_sagas") as batch:
        batch.drop_column("stalled_claims")
        batch.drop_column("claimed_at")
