"""Waking workers in other processes after a commit that wrote sagaz rows (PostgreSQL).

Workers and relays LISTEN on `sagaz_sagas` / `sagaz_outbox` (see `sagaz.outbox.listen`).
How a unit of work wakes them is chosen per session with ``session.info[WAKEUP_KEY]``:

* ``"commit"`` (the default): after the commit, this process's `Notifier` for the engine
  sends the NOTIFY (on a connection borrowed from the engine's pool), coalescing the
  wake-ups of every transaction committed meanwhile: at most one NOTIFY statement per engine every
  `COALESCE_SECONDS` (a burst's first commit is notified at once). The committing
  transaction itself issues no NOTIFY, so it does not take PostgreSQL's global notify
  lock at commit - concurrent committers are not serialised on it. A rollback wakes
  nobody. A process that dies between its commit and the NOTIFY leaves the rows to the
  workers' next poll.
* ``"transaction"``: the NOTIFY rides inside the writing statement and PostgreSQL
  delivers it exactly when the transaction commits; no other connection is used, but
  every such commit takes the global notify lock (concurrent committers serialise).
* ``"off"``: no NOTIFY at all; workers in other processes find the rows at their next
  poll (the in-process post-commit signal, `sagaz.signals`, still wakes this process's
  workers at once).

Sync engines send from one background thread per engine ("sagaz-notify", gone
`LINGER_SECONDS` after the last wake-up), async engines from one task per engine and
event loop (gone once no wake-up came for `COALESCE_SECONDS`). Each NOTIFY statement
borrows one of the engine's pooled connections for one round trip and returns it: no
connection of its own, so the process never holds more connections than its pool
allows (under a pool exhausted by requests, the NOTIFY waits its turn like a request).
`Engine.dispose()` drops pending wake-ups (the process is shutting the pool down;
polling covers them) and waits for the senders; a forked child starts with fresh
notifiers (the parent's thread does not come along). A failed NOTIFY is logged as a
warning and not retried: polling covers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, cast

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session
from sqlalchemy.util import await_only, greenlet_spawn

from sagaz.errors import ConfigurationError
from sagaz.store.failures import describe_failure

logger = logging.getLogger(__name__)

WAKEUP_KEY = "sagaz.wakeup"
"""`Session.info` key choosing how other processes' workers are woken: ``"commit"``
(the default), ``"transaction"`` or ``"off"`` (see the module docstring)."""

WakeupMode = Literal["commit", "transaction", "off"]
WAKEUP_MODES: tuple[WakeupMode, ...] = ("commit", "transaction", "off")
DEFAULT_WAKEUP: WakeupMode = "commit"

#: At most one NOTIFY statement per engine (and event loop) per this many seconds.
COALESCE_SECONDS = 0.002
#: How long a sync engine's notifier thread waits for more work before it ends.
LINGER_SECONDS = 0.5


class Wakeable(Protocol):
    """Something to wake after the outermost commit: a `WakeSignal` or a `WakeAfterCommit`."""

    def notify(self) -> None: ...


def wakeup_mode(session: Session) -> WakeupMode:
    """The session's wake-up mode; ConfigurationError naming the key for anything else."""
    mode = session.info.get(WAKEUP_KEY, DEFAULT_WAKEUP)
    if mode not in WAKEUP_MODES:
        raise ConfigurationError(
            f"session.info[{WAKEUP_KEY!r}] must be one of {', '.join(WAKEUP_MODES)}, "
            f"got {mode!r:.80}"
        )
    return cast(WakeupMode, mode)


@dataclass(frozen=True, slots=True)
class WakeAfterCommit:
    """A NOTIFY on each of `channels` with `schema` as payload, sent by `notifier` when
    notified."""

    notifier: Notifier
    channels: tuple[str, ...]
    schema: str

    def notify(self) -> None:
        self.notifier.request(self.channels, self.schema)


def notify_sql(batch: Iterable[tuple[str, str]]) -> str:
    """``SELECT pg_notify(channel, payload), ...`` for `batch`, with dollar-quoted
    literals (no parameters, so it runs on the raw DBAPI cursor of any driver)."""
    return "SELECT " + ", ".join(
        f"pg_notify({_quoted(channel)}, {_quoted(payload)})" for channel, payload in sorted(batch)
    )


def _quoted(value: str) -> str:
    tag = "$sagaz$"
    while tag in value:
        tag = tag[:-1] + "_$"
    return f"{tag}{value}{tag}"


@dataclass(slots=True)
class _LoopState:
    pending: set[tuple[str, str]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None
    stopped: bool = False


class Notifier:
    """Coalesced post-commit NOTIFYs for one engine (see the module docstring).

    Each NOTIFY statement borrows one of the engine's pooled connections for its one
    round trip (in autocommit) and gives it back: no connection of its own, so the
    process never holds more connections than its pool allows.
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = weakref.ref(engine)
        self._condition = threading.Condition()
        self._pending: set[tuple[str, str]] = set()
        self._thread: threading.Thread | None = None
        self._loops: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = (
            weakref.WeakKeyDictionary()
        )
        self._last_pool: sa.pool.Pool | None = None
        self.sent = 0
        """NOTIFY statements issued so far (for tests and benchmarks)."""

    def request(self, channels: Iterable[str], schema: str) -> None:
        """Have each of `channels` notified soon; returns at once (thread-safe)."""
        engine = self._engine()
        if engine is None:
            return
        keys = {(channel, schema) for channel in channels}
        if engine.dialect.is_async:
            self._request_on_loop(keys)
            return
        with self._condition:
            if keys <= self._pending:
                return  # already due: the sender will wake (or is awake) for it
            self._pending |= keys
            self._condition.notify()
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run_thread, name="sagaz-notify", daemon=True
                )
                self._thread.start()

    def _run_thread(self) -> None:
        while True:
            with self._condition:
                deadline = time.monotonic() + LINGER_SECONDS
                while not self._pending:
                    remaining = deadline - time.monotonic()
                    if self._thread is not threading.current_thread():
                        return  # disposed
                    if remaining <= 0:
                        self._thread = None
                        return
                    self._condition.wait(remaining)
                batch, self._pending = self._pending, set()
            if self._thread is not threading.current_thread():
                return  # disposed meanwhile: nothing may open its new pool
            self._send(batch)
            time.sleep(COALESCE_SECONDS)

    def _request_on_loop(self, keys: set[tuple[str, str]]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning("sagaz: no running event loop to send the post-commit NOTIFY from")
            return
        with self._condition:
            state = self._loops.get(loop)
            if state is None:
                state = self._loops[loop] = _LoopState()
        state.pending |= keys
        if state.task is None:
            state.task = loop.create_task(self._run_on_loop(state), name="sagaz-notify")

    async def _run_on_loop(self, state: _LoopState) -> None:
        """Send while wake-ups keep coming; end once none came in `COALESCE_SECONDS`."""
        try:
            while state.pending and not state.stopped:
                batch, state.pending = state.pending, set()
                await greenlet_spawn(self._send, batch)
                await asyncio.sleep(COALESCE_SECONDS)
        finally:
            state.task = None

    def _send(self, batch: set[tuple[str, str]]) -> None:
        """One NOTIFY statement for `batch` on a pooled connection; a failure is logged."""
        engine = self._engine()
        if engine is None:
            return
        pool = self._last_pool = engine.pool
        try:
            raw = pool.connect()
        except Exception as error:
            self._failed(batch, error)
            return
        try:
            self.sent += 1
            _execute_in_autocommit(engine.dialect, raw, notify_sql(batch))
        except Exception as error:
            raw.invalidate()
            self._failed(batch, error)
            return
        if engine.pool is not pool:
            raw.invalidate()  # disposed meanwhile: never back into the disposed pool
        raw.close()

    def _failed(self, batch: set[tuple[str, str]], error: Exception) -> None:
        logger.warning(
            "sagaz: the post-commit NOTIFY on %s failed (%s); workers in other processes "
            "find the rows at their next poll",
            ", ".join(sorted({channel for channel, _payload in batch})),
            describe_failure(error),  # one line, no parameters, no password
        )

    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's thread, tasks and lock state did not come along."""
        self._condition = threading.Condition()
        self._pending = set()
        self._thread = None
        self._loops = weakref.WeakKeyDictionary()
        self._last_pool = None

    def _disposed(self, _engine: sa.Engine) -> None:
        """`Engine.dispose()`: drop what is pending, end the senders and wait for them
        (the process is shutting the pool down: nothing may open its new pool)."""
        with self._condition:
            self._pending.clear()
            thread, self._thread = self._thread, None
            self._condition.notify_all()
            loops = list(self._loops.items())
            self._loops.clear()
        for loop, state in loops:
            state.stopped = True
            state.pending.clear()
            if state.task is not None and _running_loop() is loop:
                # AsyncEngine.dispose() runs this in a greenlet on the loop: wait for the
                # task's last statement before dispose() returns (the loop may end next)
                with contextlib.suppress(sa.exc.MissingGreenlet):
                    await_only(asyncio.wait([state.task]))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        pool, self._last_pool = self._last_pool, None
        if pool is not None:
            # A NOTIFY in flight during dispose() gave its connection back to the old
            # pool, or took one from the new pool before this event ran: close it.
            with contextlib.suppress(sa.exc.MissingGreenlet):
                pool.dispose()


def _execute_in_autocommit(
    dialect: sa.Dialect, raw: sa.pool.PoolProxiedConnection, sql: str
) -> None:
    """`sql` in a transaction of its own (one round trip) on the checked-out `raw`,
    which is left as it was: no transaction open, its isolation level unchanged."""
    if dialect.driver == "asyncpg":
        # asyncpg runs a statement outside a transaction block in autocommit already;
        # switching the adapter's isolation level back and forth costs more than the send
        driver_connection = raw.driver_connection
        assert driver_connection is not None  # a connection just checked out
        await_only(driver_connection.execute(sql))
        return
    dbapi_connection = raw.dbapi_connection
    assert dbapi_connection is not None  # a connection just checked out
    dialect.set_isolation_level(dbapi_connection, "AUTOCOMMIT")
    cursor = raw.cursor()
    try:
        cursor.execute(sql)
    finally:
        cursor.close()
    dialect.reset_isolation_level(dbapi_connection)


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


_notifiers: weakref.WeakKeyDictionary[sa.Engine, Notifier] = weakref.WeakKeyDictionary()
_registry_lock = threading.Lock()


def notifier_for(engine: sa.Engine) -> Notifier:
    """This process's `Notifier` for `engine` (created on first use)."""
    notifier = _notifiers.get(engine)
    if notifier is not None:
        return notifier
    with _registry_lock:
        notifier = _notifiers.get(engine)
        if notifier is None:
            notifier = _notifiers[engine] = Notifier(engine)
            event.listen(engine, "engine_disposed", notifier._disposed)
    return notifier


def _after_fork_in_child() -> None:
    for notifier in list(_notifiers.values()):
        notifier._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
