"""The database URL sagaz's own engines and workers use, derived from Django's
`DATABASES`, and the inverse for settings files that take one URL from the
environment."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from django.db import connections
from sqlalchemy.engine import URL, make_url

from sagaz.integrations.django.errors import SettingsError

__all__ = ["database_from_url", "database_url"]

#: DATABASES[...]["OPTIONS"] keys that Django itself consumes (not psycopg arguments).
_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "assume_role", "pool", "init_command"}
)


def database_url(alias: str) -> str:
    """The SQLAlchemy URL of Django database `alias`, for
    processes and engines of sagaz's own: ``postgresql+psycopg://...`` with the
    connection's psycopg OPTIONS (search_path via ``options``, ``application_name``,
    ``sslmode``, ...) as query arguments, or ``sqlite:///NAME``.

    Read from the live connection settings, so a test database Django created is the one
    named. Raises SettingsError (ImproperlyConfigured) for a database sagaz does not support (only
    PostgreSQL and SQLite) and for an in-memory SQLite database (no other connection can
    see it).
    """
    connection = connections[alias]
    settings_dict: Mapping[str, Any] = connection.settings_dict
    vendor = connection.vendor
    if vendor == "postgresql":
        return _postgresql_url(settings_dict).render_as_string(hide_password=False)
    if vendor == "sqlite":
        name = str(settings_dict.get("NAME") or "")
        if not name or name == ":memory:" or "mode=memory" in name:
            raise SettingsError(
                f"DATABASES[{alias!r}] is an in-memory SQLite database; sagaz's workers need "
                "a database file they can open too"
            )
        return URL.create("sqlite", database=name).render_as_string(hide_password=False)
    raise SettingsError(f"DATABASES[{alias!r}] is {vendor}; sagaz supports PostgreSQL and SQLite")


def _postgresql_url(settings_dict: Mapping[str, Any]) -> URL:
    options = dict(settings_dict.get("OPTIONS") or {})
    query: dict[str, str] = {
        str(key): str(value)
        for key, value in options.items()
        if key not in _DJANGO_ONLY_OPTIONS and value is not None
    }
    host = str(settings_dict.get("HOST") or "") or None
    if host is not None and host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        host = None
    port = settings_dict.get("PORT")
    return URL.create(
        "postgresql+psycopg",
        username=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=host,
        port=int(port) if port else None,
        database=settings_dict.get("NAME") or None,
        query=query,
    )


def database_from_url(url: str | URL) -> dict[str, Any]:
    """A `DATABASES` entry for a SQLAlchemy-style URL (the inverse of `database_url`):
    ``postgresql[+driver]://user:password@host:port/name?options=...`` (query arguments
    become psycopg OPTIONS) or ``sqlite:///path``. For settings files that take one
    database URL from the environment."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as error:
        raise SettingsError(f"{url!r} is not a database URL") from error
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database:
            raise SettingsError(f"{url!r}: a SQLite URL needs a file path")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database}
    if backend == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.database or "",
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
            "OPTIONS": {
                key: value if isinstance(value, str) else value[-1]
                for key, value in parsed.query.items()
            },
        }
    raise SettingsError(f"{url!r}: sagaz supports postgresql and sqlite, not {backend}")
