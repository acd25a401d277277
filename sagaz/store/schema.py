"""sagaz's tables: the single source of the schema.

Alembic migrations, Django migrations and test fixtures all derive from this module; a
test proves the migrations produce exactly these tables. Everything lives on sagaz's own
`metadata` (never the application's), with a naming convention so constraint names are
stable across databases.

Dialect notes: JSON documents are stored as sagaz's own JSON text (`JSONText`: ``json``
on PostgreSQL, a BLOB in SQLite's ``JSON`` column), so they read back exactly; the
outbox's `seq` is a BIGINT identity on PostgreSQL and SQLite's INTEGER PRIMARY KEY
(rowid) elsewhere; the "pending" indexes are partial on both PostgreSQL and SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa

from sagaz.store.json_text import JSONText

TABLE_PREFIX = "sagaz_"

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: A JSON document that reads back exactly as written (see `sagaz.store.json_text`).
#: Python None is stored as SQL NULL (not JSON null), so COALESCE can merge documents.
JSONDocument = JSONText()
#: The outbox payload: any JSON value, None being the JSON document ``null``.
JSONPayload = JSONText(json_null=True)
#: A 64-bit counter that autoincrements on PostgreSQL and SQLite alike.
BigSerial = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = sa.DateTime(timezone=True)

SAGA_ID = sa.Uuid(as_uuid=False)

#: Saga statuses a worker may claim (PENDING, or in flight with an expired lease).
RUNNABLE_SAGA_STATUSES = ("pending", "running", "compensating")

sagas = sa.Table(
    f"{TABLE_PREFIX}sagas",
    metadata,
    sa.Column("id", SAGA_ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("status", sa.String(20), nullable=False),
    sa.Column("context", JSONDocument, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("correlation_id", sa.String(128), nullable=True),
    sa.Column("lease_owner", sa.String(200), nullable=True),
    sa.Column("lease_expires_at", Timestamp, nullable=True),
    # Fencing token: incremented by every claim; a write must carry the current value.
    sa.Column("lease_token", sa.BigInteger(), nullable=False, server_default="0"),
    # How many times a worker claimed the saga.
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    # When the current (or last) claim was made: a step finished since then is progress.
    sa.Column("claimed_at", Timestamp, nullable=True),
    # Claims in a row that ended without progress (no step finished), not counting runs
    # ended by a known infrastructure failure; a saga that keeps crashing its worker is
    # given up once this reaches the worker's max_attempts.
    sa.Column("stalled_claims", sa.Integer(), nullable=False, server_default="0"),
    # When an operator asked to cancel the saga (`sagaz cancel`): the worker running it
    # stops at its next step boundary and the saga is compensated.
    sa.Column("cancel_requested_at", Timestamp, nullable=True),
    # The W3C trace context of the request that started the saga ({"traceparent": ...,
    # "tracestate": ...}, see `sagaz.tracing`): a worker's run continues that trace.
    sa.Column("trace_context", JSONDocument, nullable=True),
    sa.UniqueConstraint("name", "idempotency_key", name="uq_sagaz_sagas_name_idempotency_key"),
    sa.Index(
        "ix_sagaz_sagas_runnable",
        "lease_expires_at",
        "created_at",
        postgresql_where=sa.text("status IN ('pending', 'running', 'compensating')"),
        sqlite_where=sa.text("status IN ('pending', 'running', 'compensating')"),
    ),
    sa.Index("ix_sagaz_sagas_status_name", "status", "name", "created_at"),
)

saga_steps = sa.Table(
    f"{TABLE_PREFIX}saga_steps",
    metadata,
    sa.Column(
        "saga_id",
        SAGA_ID,
        sa.ForeignKey(sagas.c.id, ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("name", sa.String(200), primary_key=True),
    sa.Column("status", sa.String(24), nullable=False),
    sa.Column("result", JSONDocument, nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
)

outbox = sa.Table(
    f"{TABLE_PREFIX}outbox",
    metadata,
    # Publish order: per-key ordering follows seq.
    sa.Column("seq", BigSerial, primary_key=True, autoincrement=True),
    # The event id: travels as the broker's message id / dedup key.
    sa.Column("id", SAGA_ID, nullable=False, unique=True),
    sa.Column("topic", sa.String(255), nullable=False),
    sa.Column("key", sa.String(255), nullable=True),
    sa.Column("payload", JSONPayload, nullable=False),
    sa.Column("headers", JSONDocument, nullable=False),
    sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("next_attempt_at", Timestamp, nullable=False),
    sa.Column("claim_owner", sa.String(200), nullable=True),
    sa.Column("claim_expires_at", Timestamp, nullable=True),
    sa.Column("saga_id", SAGA_ID, nullable=True, index=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("published_at", Timestamp, nullable=True),
    sa.Column("last_error", sa.Text(), nullable=True),
    sa.Index(
        "ix_sagaz_outbox_pending",
        "next_attempt_at",
        "seq",
        postgresql_where=sa.text("status = 'pending'"),
        sqlite_where=sa.text("status = 'pending'"),
    ),
    sa.Index(
        "ix_sagaz_outbox_pending_key",
        "key",
        "seq",
        postgresql_where=sa.text("status = 'pending' AND key IS NOT NULL"),
        sqlite_where=sa.text("status = 'pending' AND key IS NOT NULL"),
    ),
    sa.Index("ix_sagaz_outbox_status_published_at", "status", "published_at"),
)

inbox = sa.Table(
    f"{TABLE_PREFIX}inbox",
    metadata,
    sa.Column("consumer", sa.String(200), primary_key=True),
    sa.Column("message_id", sa.String(255), primary_key=True),
    sa.Column("received_at", Timestamp, nullable=False, index=True),
)

TABLE_NAMES = frozenset(table.name for table in metadata.sorted_tables)
"""The names of every sagaz table (what an application's autogenerate must ignore)."""
