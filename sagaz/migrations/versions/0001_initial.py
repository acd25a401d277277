"""sagaz's initial tables: sagas, saga steps, outbox, inbox.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001_initial"
down_revision = None
branch_labels = ("sagaz",)
depends_on = None

JSON = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")
UUID = sa.Uuid(as_uuid=False)
TIMESTAMP = sa.DateTime(timezone=True)
BIGSERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
RUNNABLE = sa.text("status IN ('pending', 'running', 'compensating')")
PENDING = sa.text("status = 'pending'")
PENDING_KEYED = sa.text("status = 'pending' AND key IS NOT NULL")


def upgrade() -> None:
    op.create_table(
        "sagaz_sagas",
        sa.Column("id", UUID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("context", JSON, nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("correlation_id", sa.String(128), nullable=True),
        sa.Column("lease_owner", sa.String(200), nullable=True),
        sa.Column("lease_expires_at", TIMESTAMP, nullable=True),
        sa.Column("lease_token", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sagaz_sagas"),
        sa.UniqueConstraint("name", "idempotency_key", name="uq_sagaz_sagas_name_idempotency_key"),
    )
    op.create_index(
        "ix_sagaz_sagas_runnable",
        "sagaz_sagas",
        ["lease_expires_at", "created_at"],
        postgresql_where=RUNNABLE,
        sqlite_where=RUNNABLE,
    )
    op.create_index("ix_sagaz_sagas_status_name", "sagaz_sagas", ["status", "name", "created_at"])

    op.create_table(
        "sagaz_saga_steps",
        sa.Column("saga_id", UUID, nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(24), nullable=False),
        sa.Column("result", JSON, nullable=True),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["saga_id"],
            ["sagaz_sagas.id"],
            name="fk_sagaz_saga_steps_saga_id_sagaz_sagas",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("saga_id", "name", name="pk_sagaz_saga_steps"),
    )

    op.create_table(
        "sagaz_outbox",
        sa.Column("seq", BIGSERIAL, autoincrement=True, nullable=False),
        sa.Column("id", UUID, nullable=False),
        sa.Column("topic", sa.String(255), nullable=False),
        sa.Column("key", sa.String(255), nullable=True),
        sa.Column("payload", JSON, nullable=False),
        sa.Column("headers", JSON, nullable=False),
        sa.Column("status", sa.String(20), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("next_attempt_at", TIMESTAMP, nullable=False),
        sa.Column("claim_owner", sa.String(200), nullable=True),
        sa.Column("claim_expires_at", TIMESTAMP, nullable=True),
        sa.Column("saga_id", UUID, nullable=True),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.Column("published_at", TIMESTAMP, nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_sagaz_outbox"),
        sa.UniqueConstraint("id", name="uq_sagaz_outbox_id"),
    )
    op.create_index(
        "ix_sagaz_outbox_pending",
        "sagaz_outbox",
        ["next_attempt_at", "seq"],
        postgresql_where=PENDING,
        sqlite_where=PENDING,
    )
    op.create_index(
        "ix_sagaz_outbox_pending_key",
        "sagaz_outbox",
        ["key", "seq"],
        postgresql_where=PENDING_KEYED,
        sqlite_where=PENDING_KEYED,
    )
    op.create_index(
        "ix_sagaz_outbox_status_published_at", "sagaz_outbox", ["status", "published_at"]
    )
    op.create_index("ix_sagaz_outbox_saga_id", "sagaz_outbox", ["saga_id"])

    op.create_table(
        "sagaz_inbox",
        sa.Column("consumer", sa.String(200), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("received_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name="pk_sagaz_inbox"),
    )
    op.create_index("ix_sagaz_inbox_received_at", "sagaz_inbox", ["received_at"])


def downgrade() -> None:
    op.drop_table("sagaz_inbox")
    op.drop_table("sagaz_outbox")
    op.drop_table("sagaz_saga_steps")
    op.drop_table("sagaz_sagas")
