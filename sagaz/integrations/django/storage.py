"""Writing sagaz's rows through Django's own database connection.

The rows are built by the core (`sagaz.start.build_saga_row`,
`sagaz.outbox.events.build_event_row`: the same validation, ids and correlation id as
`start_saga` / `outbox.add`) and inserted by the very statement the SQLAlchemy path
executes (`sagaz.store.statements.insert_rows_and_notify`: ``INSERT ... ON CONFLICT DO
NOTHING``, plus ``pg_notify`` in the same statement on PostgreSQL), compiled once per
table and vendor to SQL and parameters for the Django connection's driver. So:

* the row is written on `connections[using]`, inside the caller's `transaction.atomic()`
  block: it commits with the application's ORM writes or rolls back with them (a
  savepoint rollback included); no second connection is opened;
* after the commit (`transaction.on_commit`) this process's workers are woken; on
  PostgreSQL the NOTIFY wakes workers elsewhere, delivered only if the transaction
  commits; a rollback wakes nobody.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import sqlalchemy as sa
from django.db import DEFAULT_DB_ALIAS, connections, transaction
from django.db.transaction import TransactionManagementError
from sqlalchemy.engine import Dialect

from sagaz.errors import ConfigurationError, SagazError
from sagaz.outbox.events import build_event_row
from sagaz.saga import Saga
from sagaz.signals import WakeSignal, outbox_signal, saga_signal
from sagaz.start import build_saga_row
from sagaz.store.schema import metadata, outbox, sagas
from sagaz.store.statements import OUTBOX_CHANNEL, SAGA_CHANNEL, insert_rows_and_notify

__all__ = ["DjangoSagaStorage", "NotInAtomicBlockError", "compiled_insert"]

log = logging.getLogger("sagaz.integrations.django")


class NotInAtomicBlockError(SagazError, TransactionManagementError):
    """A sagaz row was to be written through Django outside ``transaction.atomic()``.

    In autocommit mode the row would commit on its own, apart from the application's
    writes - the dual write sagaz exists to prevent - so nothing is written.
    """


@dataclass(frozen=True, slots=True)
class CompiledInsert:
    """An insert of one row, compiled for one Django vendor: the SQL (pyformat
    placeholders, as both Django backends accept) and how to turn a row into its
    parameters with SQLAlchemy's own type processing (JSON, UUID, timestamps)."""

    sql: str
    compiled: sa.sql.compiler.Compiled
    processors: Mapping[str, Callable[[Any], Any] | None]
    names: Mapping[str, str]

    def parameters(self, row: Mapping[str, Any]) -> dict[str, Any]:
        values = self.compiled.construct_params(
            {f"sagaz_{column}": value for column, value in row.items()}, escape_names=False
        )
        assert values is not None
        parameters: dict[str, Any] = {}
        for name, value in values.items():
            processor = self.processors[name]
            parameters[self.names.get(name, name)] = (
                # None too: the outbox payload's processor turns it into JSON null
                processor(value) if processor is not None else value
            )
        return parameters


def _dialect(vendor: str) -> Dialect:
    if vendor == "postgresql":
        from django.db.backends.postgresql.psycopg_any import (  # type: ignore[import-untyped]
            is_psycopg3,
        )

        if not is_psycopg3:
            raise ConfigurationError(
                "sagaz's Django integration needs psycopg 3 for PostgreSQL "
                "(pip install 'sagaz[postgres]'); this Django uses psycopg2"
            )
        from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

        return psycopg_dialect()  # type: ignore[no-untyped-call]
    if vendor == "sqlite":
        from sqlalchemy.dialects.sqlite.pysqlite import dialect as sqlite_dialect

        # Django's SQLite cursor turns %(name)s into :name itself.
        return sqlite_dialect(paramstyle="pyformat")
    raise ConfigurationError(f"sagaz supports PostgreSQL and SQLite, not Django's {vendor!r}")


@functools.lru_cache(maxsize=32)
def compiled_insert(
    table_name: str, vendor: str, columns: tuple[str, ...], channel: str
) -> CompiledInsert:
    """`insert_rows_and_notify` for one row of `columns`, compiled for `vendor`."""
    table = metadata.tables[table_name]
    dialect = _dialect(vendor)
    placeholders = {
        column: sa.bindparam(f"sagaz_{column}", type_=table.c[column].type) for column in columns
    }
    statement = insert_rows_and_notify(table, [placeholders], dialect.name, channel)
    compiled = cast(sa.ClauseElement, statement).compile(dialect=dialect)
    binds = compiled.binds  # type: ignore[attr-defined]
    processors = {
        name: bind.type.dialect_impl(dialect).bind_processor(dialect)
        for name, bind in binds.items()
    }
    escaped = getattr(compiled, "escaped_bind_names", None) or {}
    return CompiledInsert(compiled.string, compiled, processors, dict(escaped))


class DjangoSagaStorage:
    """Starts sagas and adds outbox events through one Django database alias's own
    connection, on PostgreSQL (psycopg 3) and SQLite alike.

    Every write must happen inside ``transaction.atomic(using=...)`` (also the one
    ``ATOMIC_REQUESTS = True`` opens) - otherwise `NotInAtomicBlockError`, and nothing
    is written - and commits or rolls back with it. Thread-safe: Django's connections
    are per thread.
    """

    def __init__(self, using: str = DEFAULT_DB_ALIAS) -> None:
        self.using = using

    def start_saga(
        self,
        saga: type[Saga] | Saga | str,
        context: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> str:
        """Write a PENDING saga (see `sagaz.start_saga` for the id and the idempotency
        rules) and return its id."""
        self._connection("atomic_saga_start")
        row = build_saga_row(saga, context, idempotency_key=idempotency_key)
        self._insert(sagas, row, SAGA_CHANNEL, saga_signal)
        return str(row["id"])

    def add_event(
        self,
        topic: str,
        payload: Any,
        *,
        key: str | None = None,
        headers: Mapping[str, str] | None = None,
        saga_id: str | None = None,
    ) -> str:
        """Write an outbox event (see `sagaz.outbox.add` for the rules) and return its id."""
        self._connection("atomic_outbox_add")
        row = build_event_row(topic, payload, key=key, headers=headers, saga_id=saga_id)
        self._insert(outbox, row, OUTBOX_CHANNEL, outbox_signal)
        return str(row["id"])

    def _connection(self, caller: str) -> Any:
        connection = connections[self.using]
        if not connection.in_atomic_block:
            raise NotInAtomicBlockError(
                f"{caller} must be called inside transaction.atomic("
                f"{'' if self.using == DEFAULT_DB_ALIAS else f'using={self.using!r}'}) "
                f"(or a view with ATOMIC_REQUESTS on database {self.using!r}): in "
                "autocommit mode the saga would commit apart from your own writes"
            )
        return connection

    def _insert(
        self, table: sa.Table, row: Mapping[str, Any], channel: str, signal: WakeSignal
    ) -> None:
        connection = self._connection("sagaz")
        insert = compiled_insert(table.name, connection.vendor, tuple(row), channel)
        with connection.cursor() as cursor:
            cursor.execute(insert.sql, insert.parameters(row))
        transaction.on_commit(signal.notify, using=self.using, robust=True)
