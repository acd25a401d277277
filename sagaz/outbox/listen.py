"""Cross-process wake-ups through PostgreSQL LISTEN/NOTIFY.

A commit that wrote outbox (or saga) rows is followed by `pg_notify('sagaz_outbox',
<schema>)` - by default sent after the commit by the writing process's coalescing
notifier, or inside the transaction, or not at all (see `sagaz.store.wakeup`). A
`NotificationListener` keeps one connection of the engine's pool LISTENing on a channel
and calls back on each notification, so a relay in another process starts publishing
within milliseconds instead of at its next poll.

The connection is dedicated: it is taken from the engine (so it carries the engine's
connect arguments, e.g. `application_name`), kept in autocommit, and invalidated - never
returned to the pool still LISTENing - when the listener stops. A dropped connection is
noticed (asyncpg's termination callback, psycopg's read error, or a periodic `SELECT 1`)
and replaced with growing delays; every (re)connect calls back once, since notifications
sent while nobody listened are lost. A notification whose payload names another schema
(sagaz's tables of another tenant or test in the same database) is ignored; an empty
payload wakes every listener. Works with the asyncpg and psycopg async drivers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from sagaz.store.failures import log_failure

logger = logging.getLogger(__name__)


class NotificationListener:
    """LISTEN on `channel` through a dedicated connection of `engine`; call `on_notify`."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        on_notify: Callable[[], None],
        *,
        keepalive: float = 30.0,
        max_reconnect_delay: float = 5.0,
    ) -> None:
        if engine.dialect.name != "postgresql":
            raise ValueError(f"LISTEN/NOTIFY needs PostgreSQL, not {engine.dialect.name}")
        if not channel.isidentifier():
            raise ValueError(f"channel must be a plain identifier, got {channel!r}")
        self.engine = engine
        self.channel = channel
        self.on_notify = on_notify
        self.keepalive = keepalive
        self.max_reconnect_delay = max_reconnect_delay
        self.listening = asyncio.Event()
        """Set while the LISTEN is in effect (cleared while reconnecting)."""
        self.backend_pid: int | None = None
        """The server process id of the listening connection (for tests and diagnostics)."""
        self.schema: str | None = None
        """The listening connection's current schema: notifications for others are ignored."""

    async def run(self) -> None:
        """Listen until cancelled, reconnecting whenever the connection drops."""
        delay = 0.1
        while True:
            try:
                connection = await self._connect()
            except Exception as error:
                log_failure(
                    logger,
                    error,
                    "outbox LISTEN %s: cannot connect, retrying in %.1fs",
                    self.channel,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_reconnect_delay)
                continue
            delay = 0.1
            try:
                self.listening.set()
                self.on_notify()
                await self._receive(connection)
            except Exception as error:
                log_failure(
                    logger, error, "outbox LISTEN %s: connection lost, reconnecting", self.channel
                )
            finally:
                self.listening.clear()
                self.backend_pid = None
                await _discard(connection)

    async def _connect(self) -> AsyncConnection:
        connection = await self.engine.connect()
        try:
            await connection.execution_options(isolation_level="AUTOCOMMIT")
            row = (
                await connection.execute(text("SELECT pg_backend_pid(), current_schema()"))
            ).one()
            self.backend_pid, self.schema = row[0], row[1]
            await connection.exec_driver_sql(f"LISTEN {self.channel}")
        except BaseException:
            await _discard(connection)
            raise
        return connection

    async def _receive(self, connection: AsyncConnection) -> None:
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        if hasattr(driver, "add_listener"):  # asyncpg
            await self._receive_asyncpg(connection, driver)
        elif hasattr(driver, "notifies"):  # psycopg 3
            await self._receive_psycopg(connection, driver)
        else:
            raise TypeError(f"no LISTEN support for the {type(driver).__module__} driver")

    async def _receive_asyncpg(self, connection: AsyncConnection, driver: Any) -> None:
        lost = asyncio.Event()

        def notified(_connection: object, _pid: int, _channel: str, payload: str) -> None:
            self._notified(payload)

        def terminated(*_args: object) -> None:
            lost.set()

        await driver.add_listener(self.channel, notified)
        driver.add_termination_listener(terminated)
        while True:
            try:
                async with asyncio.timeout(self.keepalive):
                    await lost.wait()
            except TimeoutError:
                await self._ping(connection)
                continue
            raise ConnectionError("the listening connection was closed")

    async def _receive_psycopg(self, connection: AsyncConnection, driver: Any) -> None:
        while True:
            async for notify in driver.notifies(timeout=self.keepalive):
                self._notified(notify.payload)
            await self._ping(connection)

    def _notified(self, payload: str) -> None:
        if not payload or payload == self.schema:
            self.on_notify()

    async def _ping(self, connection: AsyncConnection) -> None:
        async with asyncio.timeout(max(self.keepalive, 5.0)):
            await connection.exec_driver_sql("SELECT 1")


async def _discard(connection: AsyncConnection) -> None:
    """Close the connection for good: a LISTENing connection must not go back to the pool."""
    try:
        await connection.invalidate()
    except Exception:
        logger.debug("outbox LISTEN: invalidating the connection failed", exc_info=True)
    try:
        await connection.close()
    except Exception:
        logger.debug("outbox LISTEN: closing the connection failed", exc_info=True)
