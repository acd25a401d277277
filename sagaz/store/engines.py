"""Engines sagaz creates, with the settings its concurrency needs.

On SQLite several connections write concurrently (a worker's claims, the group commit,
transactional steps), so every engine sagaz builds for SQLite uses WAL (readers do not
block the writer), a busy timeout, enforced foreign keys, and `BEGIN IMMEDIATE` (a
transaction takes the write lock when it starts, so a read-then-write transaction never
fails half-way with "database is locked" when another writer got in between). An
application that writes sagaz rows through its own SQLite engine can call
`configure_sqlite(engine)` on it for the same behaviour.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL
from sqlalchemy.ext import asyncio as sa_asyncio

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


def create_engine(url: str | URL, **options: Any) -> sa.Engine:
    """A sync engine for `url` (an async driver in it is swapped for its sync twin)."""
    engine = sa.create_engine(sync_url(url), **options)
    configure_sqlite(engine)
    return engine


def create_async_engine(url: str | URL, **options: Any) -> sa_asyncio.AsyncEngine:
    """An async engine for `url` (a sync driver in it is swapped for its async twin)."""
    engine = sa_asyncio.create_async_engine(async_url(url), **options)
    configure_sqlite(engine)
    return engine
