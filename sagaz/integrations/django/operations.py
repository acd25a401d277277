"""`AlembicRevision`: a Django migration operation that applies one of sagaz's own Alembic
revisions through Django's schema editor.

The SQL is what ``sagaz db upgrade --sql`` would print for the connection's vendor
(Alembic's offline mode, rendered from the revision shipped in `sagaz/migrations`), so
``manage.py migrate`` and ``sagaz db upgrade`` build the very same tables, and the
Django migration history advances in step with sagaz's Alembic history. The revision is
also recorded in sagaz's version table (``sagaz_alembic_version``), so ``sagaz db
current`` and later ``sagaz db upgrade`` runs agree with what ``migrate`` did - and a
revision that ``sagaz db upgrade`` already applied is skipped by ``migrate``.
"""

from __future__ import annotations

import logging
from typing import Any

from alembic.runtime.environment import EnvironmentContext
from alembic.script import ScriptDirectory
from django.db.migrations.operations.base import Operation

from sagaz.store.migrations import VERSION_TABLE, alembic_config

__all__ = ["AlembicRevision", "revision_sql"]

log = logging.getLogger("sagaz.integrations.django")

#: A URL per Django vendor: offline mode only needs the dialect, never connects.
_OFFLINE_URLS = {"postgresql": "postgresql+psycopg://", "sqlite": "sqlite://"}


class _Statements:
    """An Alembic output buffer that keeps each statement it is given, without the
    comments and the terminator."""

    def __init__(self) -> None:
        self.statements: list[str] = []

    def write(self, text: str) -> int:
        statement = text.strip()
        if statement and not statement.startswith("--"):
            self.statements.append(statement.removesuffix(";").rstrip())
        return len(text)

    def flush(self) -> None:
        return None


def revision_sql(vendor: str, *, start: str | None, end: str) -> list[str]:
    """The SQL statements that take sagaz's tables from revision `start` (None: nothing)
    to `end` ("base" for a downgrade to nothing) on `vendor`, as Alembic's offline mode
    renders them - including the version table's bookkeeping, excluding transaction
    control (Django's migration executor owns the transaction)."""
    if vendor not in _OFFLINE_URLS:
        raise ValueError(f"sagaz supports PostgreSQL and SQLite, not Django's {vendor!r}")
    config = alembic_config()
    config.set_main_option("sqlalchemy.url", _OFFLINE_URLS[vendor])
    script = ScriptDirectory.from_config(config)
    buffer = _Statements()
    downgrade = end == "base" or (
        start is not None and end in _ancestors(script, start) and end != start
    )

    def steps(revision: Any, _context: Any) -> Any:
        if downgrade:
            return script._downgrade_revs(end, revision)
        return script._upgrade_revs(end, revision)

    with EnvironmentContext(
        config,
        script,
        fn=steps,
        as_sql=True,
        starting_rev=start,
        destination_rev=end,
    ) as environment:
        environment.configure(
            url=_OFFLINE_URLS[vendor],
            output_buffer=buffer,  # type: ignore[arg-type]
            version_table=VERSION_TABLE,
            literal_binds=True,
            transactional_ddl=False,
        )
        with environment.begin_transaction():
            environment.run_migrations()
    return buffer.statements


def _ancestors(script: ScriptDirectory, revision: str) -> set[str]:
    return {item.revision for item in script.walk_revisions(base="base", head=revision)}


def _current_revision(connection: Any) -> tuple[bool, str | None]:
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
            version_table_exists, current = _current_revision(connection)
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
