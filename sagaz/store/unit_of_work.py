"""Rows that ride along with the application's own unit of work.

`start_saga` and `outbox.add` do not execute anything: they queue a row on the caller's
session (in `session.info`) tagged with the transaction (or savepoint) that was current.
Session events, registered once on the sync `Session` class (and so reaching every
`AsyncSession` through its `sync_session`), write the queued rows inside the session's own
flush or commit, on the session's own connection:

* `after_flush` and `before_commit` write the queued rows: on PostgreSQL every queued
  row of every sagaz table in ONE statement of a fixed shape (one json parameter per
  table, compiled once by SQLAlchemy), on SQLite one cached executemany per table;
  how workers elsewhere are woken is `sagaz.store.wakeup`'s (``session.info[WAKEUP_KEY]``);
* `after_soft_rollback` of a savepoint drops the rows queued inside it, and queues again
  the rows queued *outside* it that a flush inside it wrote (the database undid that
  write; the next flush or commit writes them again - ``ON CONFLICT DO NOTHING`` keeps
  the repeat harmless); a rollback of the whole transaction drops everything;
* `after_commit` of the outermost transaction wakes this process's workers (and, in the
  default wake-up mode, has the NOTIFY sent); a rollback wakes nobody;
* `after_transaction_end` of the outermost transaction forgets whatever is left.

The rows go on `session.connection()` - the session's default bind - unless the session
says otherwise through ``session.info[BIND_ARGUMENTS_KEY]`` (for sessions with several
binds; see `BIND_ARGUMENTS_KEY`).

Nothing here commits, flushes on its own, or opens a connection of its own.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session
from sqlalchemy.orm import Session, SessionTransaction, scoped_session

from sagaz.signals import WakeSignal
from sagaz.store.statements import RowGroup, postgres_insert_groups, rows_document, sqlite_insert
from sagaz.store.wakeup import Wakeable, WakeAfterCommit, notifier_for, wakeup_mode

_INFO_KEY = "sagaz.unit_of_work"
BIND_ARGUMENTS_KEY = "sagaz.bind_arguments"
"""`Session.info` key choosing the connection sagaz's rows are written on.

Absent (the default): `session.connection()`, the session's default bind. Otherwise the
value is a mapping of bind arguments for ``session.connection(bind_arguments=...)`` -
``{"mapper": Order}``, ``{"clause": orders_table}`` or ``{"bind": engine}`` - or a
callable that receives the sync `Session` at write time (inside its flush or commit) and
returns such a mapping; it may raise to refuse the unit of work, and the error then
propagates from the flush or commit before anything is committed. Either way the rows
stay on a connection of the session's own transaction.
"""

BindArguments = Mapping[str, Any] | Callable[[Session], Mapping[str, Any]]


@dataclass(slots=True)
class _QueuedRow:
    table: sa.Table
    row: dict[str, Any]
    #: The transaction or savepoint current when the row was queued: the row dies with it.
    transaction: SessionTransaction | None
    channel: str
    signal: WakeSignal
    #: The savepoint current when a flush wrote the row (None: not written yet, or
    #: written outside every savepoint, where only the whole transaction can undo it).
    written_in: SessionTransaction | None = None


@dataclass(slots=True)
class _Buffer:
    queued: list[_QueuedRow] = field(default_factory=list)
    #: Rows written inside a savepoint that is still open or released into an open one:
    #: a rollback of that savepoint undoes the write, so they may have to be queued again.
    written: list[_QueuedRow] = field(default_factory=list)
    signals: set[Wakeable] = field(default_factory=set)


AnySession = Session | AsyncSession | scoped_session[Any] | async_scoped_session[Any]
"""What `start_saga` and `outbox.add` write through: a session or a scoped-session proxy."""


def sync_session_of(session: AnySession, caller: str) -> Session:
    """The sync `Session` behind `session`: the `Session` itself, an `AsyncSession`'s
    `sync_session`, or for a `scoped_session` (such as Flask-SQLAlchemy's ``db.session``)
    or an `async_scoped_session` the session current in its scope - created if there is
    none yet, just as calling the proxy does. TypeError naming `caller` for anything else.
    """
    if isinstance(session, scoped_session | async_scoped_session):
        session = session()
    if isinstance(session, AsyncSession):
        return session.sync_session
    if isinstance(session, Session):
        return session
    raise TypeError(
        f"{caller} needs a SQLAlchemy Session or AsyncSession (or a scoped_session of one), "
        f"got {type(session).__name__}"
    )


def queue_row(
    session: Session, table: sa.Table, row: dict[str, Any], *, channel: str, signal: WakeSignal
) -> None:
    """Queue `row` for `table` on `session`'s current transaction (or savepoint).

    A session with no transaction yet begins one here, as `session.add()` would (no I/O:
    the connection is taken at flush), so that a rollback or close that follows discards
    the row - without it nothing would roll back, and the next commit would write it.
    """
    transaction = session.get_nested_transaction() or session.get_transaction()
    if transaction is None:
        transaction = session.begin()
    info = session.info
    buffer = info.get(_INFO_KEY)
    if buffer is None:
        buffer = info[_INFO_KEY] = _Buffer()
    buffer.queued.append(_QueuedRow(table, row, transaction, channel, signal))


def pending_rows(session: Session | AsyncSession, table: sa.Table) -> list[dict[str, Any]]:
    """Rows queued on `session` for `table` and not yet written (for tests and debugging)."""
    buffer = sync_session_of(session, "pending_rows").info.get(_INFO_KEY)
    return [q.row for q in buffer.queued if q.table is table] if buffer else []


def _write_queued(session: Session) -> None:
    buffer: _Buffer | None = session.info.get(_INFO_KEY)
    if buffer is None or not buffer.queued:
        return
    mode = wakeup_mode(session)  # may refuse: the rows stay queued
    connection = _connection_for_rows(session)  # may refuse: the rows stay queued
    queued, buffer.queued = buffer.queued, []
    _remember_written(session, buffer, queued)
    if connection.dialect.name == "postgresql":
        _write_postgres(connection, queued, mode, buffer.signals)
        return
    by_table: dict[sa.Table, list[_QueuedRow]] = {}
    for item in queued:
        by_table.setdefault(item.table, []).append(item)
    for table, items in by_table.items():
        # One executemany per table per flush, compiled once (SQLAlchemy's cache).
        connection.execute(sqlite_insert(table, connection.dialect.name), [i.row for i in items])
        buffer.signals.add(items[0].signal)


def _remember_written(session: Session, buffer: _Buffer, rows: list[_QueuedRow]) -> None:
    """Note the savepoint `rows` are written in, so that its rollback can queue them again.

    Rows written outside every savepoint need no note: only a rollback of the whole
    transaction undoes them, and that drops everything anyway.
    """
    savepoint = session.get_nested_transaction()
    if savepoint is None:
        return
    for item in rows:
        item.written_in = savepoint
    buffer.written.extend(rows)


def _write_postgres(
    connection: sa.Connection, queued: list[_QueuedRow], mode: str, signals: set[Wakeable]
) -> None:
    """Every queued row in ONE statement of a fixed shape (one json parameter per table),
    and with it the NOTIFY when `mode` is "transaction" (see `sagaz.store.wakeup`)."""
    groups: dict[RowGroup, list[dict[str, Any]]] = {}
    woken: list[Wakeable] = []
    for item in queued:
        key = (item.table, tuple(item.row), item.channel)
        rows = groups.get(key)
        if rows is None:
            rows = groups[key] = []
            woken.append(item.signal)
        rows.append(item.row)
    shapes = tuple(groups)
    statement = postgres_insert_groups(shapes, notify=mode == "transaction")
    names = _PARAMETER_NAMES[: len(shapes)]  # two tables: never more than 64 groups
    parameters = dict(zip(names, map(rows_document, groups.values()), strict=True))
    schema = connection.execute(statement, parameters).scalar()
    signals.update(woken)
    if mode == "commit" and schema is not None:
        channels = tuple(channel for _table, _columns, channel in shapes)
        signals.add(WakeAfterCommit(notifier_for(connection.engine), channels, schema))


#: The statement's parameter names, in group order (see `postgres_insert_groups`).
_PARAMETER_NAMES = tuple(f"rows{index}" for index in range(64))


def _connection_for_rows(session: Session) -> sa.Connection:
    choice: BindArguments | None = session.info.get(BIND_ARGUMENTS_KEY)
    if choice is None:
        return session.connection()
    arguments = choice(session) if callable(choice) else choice
    # a copy: Session.connection() pops "bind" from the mapping it is given
    return session.connection(bind_arguments=dict(arguments))


def _after_flush(session: Session, _flush_context: Any) -> None:
    _write_queued(session)


def _before_commit(session: Session) -> None:
    _write_queued(session)


def _after_soft_rollback(session: Session, previous: SessionTransaction) -> None:
    buffer: _Buffer | None = session.info.get(_INFO_KEY)
    if buffer is None:
        return
    # A flush that fails rolls back its own subtransaction, and with it - in the
    # database - everything up to the nearest savepoint (or the whole transaction).
    while previous.parent is not None and not previous.nested:
        previous = previous.parent
    if previous.parent is None:
        buffer.queued.clear()
        buffer.written.clear()
        buffer.signals.clear()
        return
    # The database undid every write made inside `previous`: rows queued outside it go
    # back to the queue (oldest first, keeping their own transaction), the rest are gone.
    undone = [q for q in buffer.written if _inside(q.written_in, previous)]
    if undone:
        buffer.written = [q for q in buffer.written if not _inside(q.written_in, previous)]
        for item in undone:
            item.written_in = None
    survivors = [q for q in undone if not _inside(q.transaction, previous)]
    buffer.queued = survivors + [q for q in buffer.queued if not _inside(q.transaction, previous)]


def _inside(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    buffer: _Buffer | None = session.info.get(_INFO_KEY)
    if buffer is None or not buffer.signals:
        return
    signals, buffer.signals = buffer.signals, set()
    for signal in signals:
        signal.notify()


def _after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_INFO_KEY, None)


# Registered once, when this module is first imported (imports are serialised), on the
# sync Session class; each listener returns at once for a session sagaz never touched.
event.listen(Session, "after_flush", _after_flush)
event.listen(Session, "before_commit", _before_commit)
event.listen(Session, "after_soft_rollback", _after_soft_rollback)
event.listen(Session, "after_commit", _after_commit)
event.listen(Session, "after_transaction_end", _after_transaction_end)
