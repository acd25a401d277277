"""Database URLs: one setting serves the sync and the async side.

`SAGAZ_DATABASE_URL` may name a sync or an async driver; each side derives the one it
needs: PostgreSQL goes through psycopg 3 (sync and async) unless asyncpg is named, SQLite
through sqlite3 (sync) and aiosqlite (async).
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import URL, make_url

from sagaz._util import redact_database_url
from sagaz.errors import ConfigurationError

_ASYNC_DRIVERS = {"postgresql": "psycopg", "sqlite": "aiosqlite"}
_KEEP_ASYNC = {"postgresql+psycopg", "postgresql+asyncpg", "sqlite+aiosqlite"}
_TO_SYNC = {
    "postgresql": "postgresql+psycopg",
    "postgresql+asyncpg": "postgresql+psycopg",
    "sqlite+aiosqlite": "sqlite",
}


def _parse(url: str | URL) -> URL:
    try:
        parsed = make_url(url)
    except Exception as error:
        raise ConfigurationError(
            f"database URL {redact_database_url(url)!r} is not a valid SQLAlchemy URL"
        ) from error
    if parsed.get_backend_name() not in _ASYNC_DRIVERS:
        raise ConfigurationError(
            f"database URL {parsed!r}: sagaz supports postgresql and sqlite, "
            f"not {parsed.get_backend_name()}"
        )
    return parsed


def async_url(url: str | URL) -> URL:
    """The URL with an async driver (asyncpg, psycopg or aiosqlite are kept when named)."""
    parsed = _parse(url)
    if parsed.drivername in _KEEP_ASYNC:
        return parsed
    backend = parsed.get_backend_name()
    return parsed.set(drivername=f"{backend}+{_ASYNC_DRIVERS[backend]}")


def sync_url(url: str | URL) -> URL:
    """The URL with a sync driver: psycopg for PostgreSQL, sqlite3 for SQLite."""
    parsed = _parse(url)
    return parsed.set(drivername=_TO_SYNC.get(parsed.drivername, parsed.drivername))


def missing_sqlite_file(url: str | URL) -> Path | None:
    """The file a SQLite URL names when that file does not exist (connecting would create
    it, empty); None for other databases, in-memory ones, `file:` URIs (whose mode may
    forbid creating it) and existing files."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    if str(parsed.query.get("uri", "")).lower() in ("true", "1"):
        return None
    path = Path(str(parsed.database))
    return None if path.exists() else path
