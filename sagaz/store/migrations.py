"""Running sagaz's migrations from code, and keeping them out of the application's.

sagaz's Alembic environment ships inside the package (`sagaz/migrations`), with its own
version table (`sagaz_alembic_version`), so it runs from an installed wheel and never
touches the application's Alembic history:

    from sagaz.store.migrations import upgrade
    upgrade("postgresql://...")            # or upgrade(connection) inside your own code

An application's own Alembic `env.py` passes `include_object=exclude_sagaz_objects` to
`context.configure(...)` so its autogenerate neither drops nor re-creates sagaz's tables.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from sagaz.store.schema import TABLE_NAMES

VERSION_TABLE = "sagaz_alembic_version"
"""sagaz's own Alembic version table."""

_SAGAZ_NAMES = frozenset({*TABLE_NAMES, VERSION_TABLE})


def _table_name(object_: Any, name: str | None, type_: str) -> str | None:
    if type_ == "table":
        return name
    table = getattr(object_, "table", None)
    return getattr(table, "name", None)


def is_sagaz_object(object_: Any, name: str | None, type_: str) -> bool:
    """True for sagaz's tables, their columns, indexes and constraints, and its version
    table."""
    return _table_name(object_, name, type_) in _SAGAZ_NAMES


def exclude_sagaz_objects(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """An Alembic `include_object` hook for an application's env.py: skip sagaz's objects,
    so the application's autogenerate never proposes dropping or creating them."""
    return not is_sagaz_object(object_, name, type_)


def include_sagaz_objects(
    object_: Any, name: str | None, type_: str, reflected: bool, compare_to: Any
) -> bool:
    """The opposite filter, used by sagaz's own environment: only sagaz's objects."""
    return is_sagaz_object(object_, name, type_) and name != VERSION_TABLE


def alembic_config(target: str | sa.Connection | None = None) -> Config:
    """An Alembic Config for sagaz's migrations, built in code (no ini file needed).

    `target` is a database URL (sync or async) or an open sync Connection to migrate
    through; None leaves it to the SAGAZ_DATABASE_URL environment variable.
    """
    config = Config()
    script_location = resources.files("sagaz") / "migrations"
    config.set_main_option("script_location", str(script_location))
    if isinstance(target, sa.Connection):
        config.attributes["connection"] = target
    elif target is not None:
        config.attributes["url"] = str(target)
    return config


def upgrade(target: str | sa.Connection | None = None, revision: str = "head") -> None:
    """Migrate sagaz's tables up to `revision` (idempotent at head).

    With a Connection, the migration runs in the caller's transaction (commit it).
    """
    command.upgrade(alembic_config(target), revision)


def downgrade(target: str | sa.Connection | None = None, revision: str = "base") -> None:
    """Migrate sagaz's tables down to `revision` (`base` drops them all)."""
    command.downgrade(alembic_config(target), revision)


def current(connection: sa.Connection) -> str | None:
    """The sagaz revision the database is at, or None before the first upgrade."""
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()
