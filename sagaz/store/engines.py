"""Engines sagaz creates, with the settings its concurrency needs.

On SQLite several connections write concurrently (a worker's claims, the group commit,
transactional steps), so every engine sagaz builds for SQLite uses WAL (readers do not
block the writer), a busy timeout, enforced foreign keys, and `BEGIN IMMEDIATE` (a
transaction takes the write lock when it starts, so a read-then-write transaction never
fails half-way with "database is locked" when another writer got in between). An
application that writes sagaz rows through its own SQLite engine can call
`configure_sqlite(engine)` on it for the same behaviour.

Every engine sagaz creates hides statement parameters (`hide_parameters=True`): saga
contexts, step results and event payloads are user data, and must not end up in an
exception's text or a log line. Pass `hide_parameters=False` to see them while debugging.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext import asyncio as sa_asyncio

from sagaz.errors import MissingExtraError
from sagaz.store.urls import async_url, sync_url

SQLITE_BUSY_TIMEOUT_MS = 30_000


def configure_sqlite(engine: sa.Engine | sa_asyncio.AsyncEngine) -> None:
    """Apply WAL, busy timeout, foreign keys and BEGIN IMMEDIATE to a SQLite engine."""
    sync_engine = engine.sync_engine if isinstance(engine, sa_asyncio.AsyncEngine) else engine
    if sync_engine.dialect.name != "sqlite":
        return

    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" event issue BEGIN
        cursor = dbapi_connection.cursor()
        if sync_engine.url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    def on_begin(connection: sa.Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(sync_engine, "connect", on_connect)
    event.listen(sync_engine, "begin", on_begin)


#: SQLAlchemy driver name -> (the module it imports, the sagaz extra that installs it).
DRIVER_EXTRAS = {
    "postgresql+psycopg": ("psycopg", "postgres"),
    "postgresql+asyncpg": ("asyncpg", "asyncpg"),
    "sqlite+aiosqlite": ("aiosqlite", "sqlite"),
}


def create_engine(url: str | URL, **options: Any) -> sa.Engine:
    """A sync engine for `url` (an async driver in it is swapped for its sync twin),
    hiding statement parameters from errors and logs unless `hide_parameters=False`.

    Raises MissingExtraError naming the extra to install when the driver is missing
    (``pip install 'sagaz[postgres]'`` for psycopg).
    """
    parsed = sync_url(url)
    with _driver_needed(parsed):
        engine = sa.create_engine(parsed, **{"hide_parameters": True, **options})
    configure_sqlite(engine)
    return engine


def create_async_engine(url: str | URL, **options: Any) -> sa_asyncio.AsyncEngine:
    """An async engine for `url` (a sync driver in it is swapped for its async twin),
    hiding statement parameters from errors and logs unless `hide_parameters=False`.

    Raises MissingExtraError naming the extra to install when the driver is missing
    (``'sagaz[postgres]'`` for psycopg, ``'sagaz[asyncpg]'``, ``'sagaz[sqlite]'`` for
    aiosqlite).
    """
    parsed = async_url(url)
    with _driver_needed(parsed):
        engine = sa_asyncio.create_async_engine(parsed, **{"hide_parameters": True, **options})
    configure_sqlite(engine)
    return engine


@contextmanager
def _driver_needed(url: URL) -> Iterator[None]:
    """Turn the ImportError of a missing driver into a MissingExtraError naming the extra
    (another ImportError, e.g. inside an installed driver, passes through)."""
    try:
        yield
    except ImportError as error:
        if isinstance(error, MissingExtraError) or url.drivername not in DRIVER_EXTRAS:
            raise
        module, extra = DRIVER_EXTRAS[url.drivername]
        if _importable(module):
            raise
        purpose = f"a {url.get_backend_name()} database engine ({url.drivername})"
        raise MissingExtraError(extra, module, purpose) from error


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True
