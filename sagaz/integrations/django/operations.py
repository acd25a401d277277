"""`AlembicRevision`: a Django migration operation that applies one of sagaz's own Alembic
revisions through Django's schema editor.

The SQL is what Alembic's offline mode (``alembic upgrade --sql``) renders for the
connection's vendor: the public ``alembic.command`` upgrade/downgrade, run - as
`sagaz.store.migrations` runs them - through sagaz's own environment and the revisions
shipped in `sagaz/migrations`, so
``manage.py migrate`` and ``sagaz db upgrade`` build the very same tables, and the
Django migration history advances in step with sagaz's Alembic history. The revision is
also recorded in sagaz's version table (``sagaz_alembic_version``), so ``sagaz db
current`` and later ``sagaz db upgrade`` runs agree with what ``migrate`` did - and a
revision that ``sagaz db upgrade`` already applied is skipped by ``migrate``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from alembic import command
from alembic.script import ScriptDirectory
from django.db.migrations.operations.base import Operation

from sagaz.store.migrations import VERSION_TABLE, alembic_config

__all__ = ["AlembicRevision", "current_revision", "revision_sql"]

log = logging.getLogger("sagaz.integrations.django")

#: A URL per Django vendor: offline mode only needs the dialect, never connects.
_OFFLINE_URLS = {"postgresql": "postgresql+psycopg://", "sqlite": "sqlite://"}

#: What sagaz's environment renders around the revisions in offline mode and Django must
#: not run: transaction control (Django's migration executor owns the transaction) and
#: the ``SET search_path`` of ``SAGAZ_DATABASE_SCHEMA`` (the Django connection's own
#: settings say where its tables live).
_NOT_FOR_DJANGO = re.compile(r"(BEGIN|COMMIT|SET search_path TO .*)", re.IGNORECASE | re.DOTALL)


class _Statements:
    """An Alembic output buffer that keeps each statement it is given, without the
    comments, the terminator and what Django must not run (`_NOT_FOR_DJANGO`)."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def write(self, text: str) -> int:
        statement = text.strip().removesuffix(";").rstrip()
        if (
            statement
            and not statement.startswith("--")
            and not _NOT_FOR_DJANGO.fullmatch(statement)
        ):
            self.statements.append(statement)
        return len(text)

    def flush(self) -> None:
        return None


def revision_sql(vendor: str, *, start: str | None, end: str) -> list[str]:
    """The SQL statements that take sagaz's tables from revision `start` (None: nothing)
    to `end` ("base" for a downgrade to nothing) on `vendor`: what ``alembic upgrade
    --sql`` (or ``downgrade --sql``) renders through sagaz's own Alembic environment -
    including the version table's bookkeeping, excluding transaction control (Django's
    migration executor owns the transaction). Raises ValueError for a vendor sagaz does
    not support and Alembic's CommandError for an unknown revision."""
    if vendor not in _OFFLINE_URLS:
        raise ValueError(f"sagaz supports PostgreSQL and SQLite, not Django's {vendor!r}")
    if start == end:
        return []
    buffer = _Statements()
    config = alembic_config()
    config.output_buffer = buffer  # type: ignore[assignment]
    config.set_main_option("sqlalchemy.url", _OFFLINE_URLS[vendor])
    if start is None:
        command.upgrade(config, end, sql=True)
    elif end == "base" or end in _ancestors(ScriptDirectory.from_config(config), start):
        command.downgrade(config, f"{start}:{end}", sql=True)
    else:
        command.upgrade(config, f"{start}:{end}", sql=True)
    return buffer.statements


def _ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    return {item.revision for item in script.walk_revisions(base="base", head=revision)}


def current_revision(connection: Any) -> tuple[bool, str | None]:
    """(whether sagaz's version table exists, the revision it records)."""
    with connection.cursor() as cursor:
        if VERSION_TABLE not in connection.introspection.table_names(cursor):
            return False, None
        cursor.execute(f"SELECT version_num FROM {VERSION_TABLE}")
        row = cursor.fetchone()
    return True, None if row is None else str(row[0])


class AlembicRevision(Operation):
    """Apply sagaz's Alembic revision `revision` (whose parent is `down_revision`, None
    for the first) forwards, and undo it backwards, on the migration's connection.

    Forwards, a revision the version table already lists (or a later one) is skipped, so
    a database that ``sagaz db upgrade`` migrated can adopt the Django migrations.
    """

    reversible = True
    reduces_to_sql = True
    atomic = True

    def __init__(self, revision: str, down_revision: str | None = None) -> None:
        self.revision = revision
        self.down_revision = down_revision

    def deconstruct(self) -> tuple[str, list[Any], dict[str, Any]]:
        kwargs = {"down_revision": self.down_revision} if self.down_revision else {}
        return (self.__class__.__name__, [self.revision], kwargs)

    def state_forwards(self, app_label: str, state: Any) -> None:
        return None  # sagaz's tables are not Django models

    def database_forwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        connection = schema_editor.connection
        version_table_exists = False
        if not schema_editor.collect_sql:
            version_table_exists, current = current_revision(connection)
            if current is not None:
                script = ScriptDirectory.from_config(alembic_config())
                if self.revision in _ancestors(script, current):
                    log.info(
                        "sagaz: tables already at %s (sagaz db upgrade); %s skipped",
                        current,
                        self.revision,
                    )
                    return
        for statement in revision_sql(
            connection.vendor, start=self.down_revision, end=self.revision
        ):
            if version_table_exists and statement.startswith(f"CREATE TABLE {VERSION_TABLE} "):
                continue  # left behind by `sagaz db downgrade base`
            schema_editor.execute(statement, params=None)

    def database_backwards(
        self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any
    ) -> None:
        for statement in revision_sql(
            schema_editor.connection.vendor,
            start=self.revision,
            end=self.down_revision or "base",
        ):
            schema_editor.execute(statement, params=None)

    def describe(self) -> str:
        return f"Apply sagaz's Alembic revision {self.revision}"

    @property
    def migration_name_fragment(self) -> str:
        return f"sagaz_{self.revision}"
