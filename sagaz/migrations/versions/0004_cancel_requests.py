"""An operator's cancel request (`sagaz cancel`): sagaz_sagas.cancel_requested_at.

Revision ID: 0004_cancel_requests
Revises: 0003_worker_claims
Create Date: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_cancel_requests"
down_revision = "0003_worker_claims"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ALTER TABLE, as in 0003: in place on SQLite, and fit for the offline mode.
    op.add_column("sagaz_sagas", sa.Column("cancel_requested_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("sagaz_sagas", "cancel_requested_at")
