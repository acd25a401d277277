"""The consumer inbox: process each received message exactly once.

Brokers deliver at least once, so a consumer sees repeats (a relay retry, a redelivery
after a crash before the ack). The inbox records (consumer, message id) in the
`sagaz_inbox` table *in the same transaction as the handler's own writes*: either both
commit - and any later copy of the message is skipped - or neither does, and the next
copy is processed as if it were the first.

    async with session.begin():
        processed = await process_once(session, "billing", message_id_of(msg), handle)
    await msg.ack()     # only after the commit: a crash before it means a redelivery

The broker consumers of `sagaz.outbox.consumers` do this (and the redelivery each broker
needs) for you. `process_once` works inside the caller's transaction (the caller commits);
`ConsumerInbox.process` owns one transaction per message. The sync twin
`process_once_sync` takes a `Session`. All three run the statements built here. Old
inbox rows are deleted by the outbox maintenance (`sagaz.outbox.maintenance`) after the
configured inbox retention.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from sagaz._util import describe, utcnow
from sagaz.errors import SagazError
from sagaz.store.schema import inbox
from sagaz.store.statements import insert_ignoring_conflicts

__all__ = [
    "MAX_CONSUMER_LENGTH",
    "MAX_MESSAGE_ID_LENGTH",
    "ConsumerInbox",
    "InvalidInboxKeyError",
    "claim_statement",
    "forget_statement",
    "is_processed",
    "process_once",
    "process_once_sync",
]

MAX_CONSUMER_LENGTH: int = inbox.c.consumer.type.length  # type: ignore[attr-defined]
MAX_MESSAGE_ID_LENGTH: int = inbox.c.message_id.type.length  # type: ignore[attr-defined]

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

#: Lets a session with per-table binds pick the engine that holds sagaz's tables.
_INBOX_CLAUSE = sa.select(inbox)


class InvalidInboxKeyError(SagazError, ValueError):
    """A consumer name or message id the inbox cannot record (wrong type, empty, too long,
    control characters). Raised before anything is written."""


def check_key(consumer: object, message_id: object) -> tuple[str, str]:
    """Return (consumer, message_id) after validating them, or raise InvalidInboxKeyError."""
    for what, value, limit in (
        ("consumer", consumer, MAX_CONSUMER_LENGTH),
        ("message_id", message_id, MAX_MESSAGE_ID_LENGTH),
    ):
        if not isinstance(value, str):
            raise InvalidInboxKeyError(f"inbox {what} must be a str, got {type(value).__name__}")
        if not value or len(value) > limit:
            raise InvalidInboxKeyError(
                f"inbox {what} must be 1 to {limit} characters, got {len(value)}: {value!r:.80}"
            )
        if _CONTROL.search(value):
            raise InvalidInboxKeyError(f"inbox {what} contains control characters: {value!r:.80}")
    return consumer, message_id  # type: ignore[return-value]


def claim_statement(
    dialect: str, consumer: str, message_id: str, received_at: datetime | None = None
) -> sa.Executable:
    """`INSERT INTO sagaz_inbox ... ON CONFLICT DO NOTHING RETURNING message_id`: one row
    back when this is the first delivery, none for a duplicate (or while another
    transaction holding the same message is undecided, it waits for that one)."""
    return (
        insert_ignoring_conflicts(inbox, dialect)
        .values(consumer=consumer, message_id=message_id, received_at=received_at or utcnow())
        .returning(inbox.c.message_id)
    )


def forget_statement(consumer: str, message_id: str) -> sa.Executable:
    """Delete the inbox row of (consumer, message_id) (undoes a claim after a failure)."""
    return sa.delete(inbox).where(inbox.c.consumer == consumer, inbox.c.message_id == message_id)


def processed_statement(consumer: str, message_id: str) -> sa.Select[Any]:
    return sa.select(sa.literal(1)).where(
        inbox.c.consumer == consumer, inbox.c.message_id == message_id
    )


async def process_once(
    session: AsyncSession,
    consumer: str,
    message_id: str,
    handler: Callable[[], Awaitable[Any] | Any],
) -> bool:
    """Run `handler()` unless `consumer` already processed `message_id`; True if it ran.

    Works inside the caller's transaction (begun automatically if none is): the inbox
    row and whatever the handler writes through `session` commit together when the
    caller commits, and not at all if it rolls back. A duplicate returns False without
    calling the handler. If the handler raises, its writes and the inbox row are undone
    (a savepoint) and the error propagates: the message counts as not processed, so a
    redelivery runs the handler again; the caller's transaction stays usable.
    Concurrent deliveries of one message: the second waits for the first transaction,
    then is skipped if it committed. `handler` may be a coroutine function or a plain
    function. Raises InvalidInboxKeyError for a bad consumer or message id.
    """
    consumer, message_id = check_key(consumer, message_id)
    connection = await session.connection(bind_arguments={"clause": _INBOX_CLAUSE})
    # The claim comes first, outside the savepoint: on pysqlite's default settings a
    # SAVEPOINT as a transaction's first statement would commit on release.
    claim = claim_statement(connection.dialect.name, consumer, message_id)
    if (await session.execute(claim)).first() is None:
        return False
    try:
        async with session.begin_nested():
            result = handler()
            if inspect.isawaitable(result):
                await result
    except Exception as error:
        try:
            await session.execute(forget_statement(consumer, message_id))
        except Exception as cleanup_error:
            _note(error, cleanup_error)
        raise
    return True


def process_once_sync(
    session: Session,
    consumer: str,
    message_id: str,
    handler: Callable[[], Any],
) -> bool:
    """The sync twin of `process_once` for a `Session` (same statements, same promises)."""
    consumer, message_id = check_key(consumer, message_id)
    connection = session.connection(bind_arguments={"clause": _INBOX_CLAUSE})
    claim = claim_statement(connection.dialect.name, consumer, message_id)
    if session.execute(claim).first() is None:
        return False
    try:
        with session.begin_nested():
            handler()
    except Exception as error:
        try:
            session.execute(forget_statement(consumer, message_id))
        except Exception as cleanup_error:
            _note(error, cleanup_error)
        raise
    return True


async def is_processed(session: AsyncSession, consumer: str, message_id: str) -> bool:
    """Whether `consumer` has a committed (or own-transaction) record of `message_id`."""
    consumer, message_id = check_key(consumer, message_id)
    return (await session.execute(processed_statement(consumer, message_id))).first() is not None


class ConsumerInbox:
    """Exactly-once processing for one consumer, one transaction per message.

        inbox = ConsumerInbox("billing", async_sessionmaker(engine))
        async for msg in ...:
            await inbox.process(message_id_of(msg), lambda session: handle(session, msg))
            await msg.ack()

    `process` opens a session, runs `handler(session)` and the inbox claim in one
    transaction and commits it; it returns False for a duplicate. If the handler raises,
    nothing is committed and the error propagates (do not ack: let the broker redeliver).
    """

    def __init__(self, consumer: str, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.consumer, _ = check_key(consumer, "-")
        self.sessions = sessions

    async def process(
        self, message_id: str, handler: Callable[[AsyncSession], Awaitable[Any] | Any]
    ) -> bool:
        async with self.sessions() as session, session.begin():
            return await process_once(session, self.consumer, message_id, lambda: handler(session))

    async def is_processed(self, message_id: str) -> bool:
        async with self.sessions() as session:
            return await is_processed(session, self.consumer, message_id)


def _note(error: BaseException, cleanup_error: BaseException) -> None:
    error.add_note(
        f"sagaz inbox: removing the inbox row after the handler failed also failed "
        f"({describe(cleanup_error)}); roll the transaction back"
    )
