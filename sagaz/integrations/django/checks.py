"""The startup check of a Django project: sagaz's tables at the revision this sagaz ships.

Judged by `sagaz.store.schema_check.verify_schema` (the rule every framework shares), on
what Django's own connection shows: sagaz's version table (`migrate` records each of
sagaz's revisions there, as `sagaz db upgrade` does) and the columns of sagaz's tables.
`SagaContextMiddleware` runs it when Django builds its middleware - once, when the web
server starts (`runserver`, gunicorn, uvicorn) - so a project that was not migrated
refuses to start with "run `python manage.py migrate`" instead of failing on its first
request. (Not a database-tagged system check: `migrate` runs those before migrating, so
one that fails would block the very command that fixes it.)
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from sagaz._util import redact_database_url
from sagaz.integrations.django.conf import database_url, get_settings
from sagaz.integrations.django.operations import current_revision
from sagaz.store.schema_check import DJANGO_HINT, SchemaState, expected_columns, verify_schema

__all__ = ["check_schema", "check_schema_at_startup", "read_schema"]

log = logging.getLogger("sagaz.integrations.django")

_checking = threading.Lock()
_passed: set[str] = set()
"""Aliases whose check passed in this process (tables do not go away while it runs)."""


def read_schema(connection: Any) -> SchemaState:
    """What the database of Django `connection` holds of sagaz's schema."""
    version_table, revision = current_revision(connection)
    with connection.cursor() as cursor:
        names = set(connection.introspection.table_names(cursor))
        columns = {
            table: frozenset(
                column.name
                for column in connection.introspection.get_table_description(cursor, table)
            )
            for table in expected_columns()
            if table in names
        }
    return SchemaState(version_table=version_table, revision=revision, columns=columns)


def check_schema(alias: str | None = None) -> None:
    """Raise `sagaz.SchemaNotReadyError` (a ConfigurationError) unless the database
    `alias` (default: SAGAZ["DATABASE"]) holds sagaz's tables at this sagaz's revision;
    the message says to run `python manage.py migrate`. A database that cannot be read
    (it does not answer, a privilege is missing) is logged, not raised: the health view
    reports it."""
    alias = alias or get_settings().database
    try:
        state = read_schema(connections[alias])
    except Exception as error:  # no connection, no privilege...: the health view says more
        log.warning(
            "cannot check sagaz's tables in DATABASES[%r] (%s); starting anyway", alias, error
        )
        return
    verify_schema(state, database=_name(alias), fix=DJANGO_HINT)
    _passed.add(alias)


def check_schema_at_startup() -> None:
    """`check_schema()` from wherever Django builds its handler: directly, or - inside a
    running event loop (an ASGI test client), where Django refuses synchronous database
    access - on a helper thread, whose connection is closed afterwards. Once it passed
    for the alias, it is not run again in this process (test clients build a handler
    each; tables do not go away while the process runs)."""
    with _checking:  # once per process, however many handlers threads build at once
        if get_settings().database in _passed:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            check_schema()
            return
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="sagaz-check") as pool:
            pool.submit(_check_on_own_thread).result()


def _check_on_own_thread() -> None:
    try:
        check_schema()
    finally:
        connections.close_all()


def _name(alias: str) -> str:
    try:
        return f"DATABASES[{alias!r}] ({redact_database_url(database_url(alias))})"
    except ImproperlyConfigured:  # in-memory SQLite: no URL to show
        return f"DATABASES[{alias!r}]"
