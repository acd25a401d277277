"""The handler the consumer tests run, in-process and in `python -m sagaz.outbox.consumers`
subprocesses (`--handler tests.inbox.consumer_handlers:record`).

`record(session, message)` inserts one `consumer_effects` row per call (message_id is
not unique on purpose: a double shows as two rows). Set in the environment, for the
message whose payload `n` is the value given:
  SAGAZ_TEST_HOLD_BEFORE_COMMIT  write the row, then create $SAGAZ_TEST_MARKER and block
                                 before the commit (a consumer killed mid-handler);
  SAGAZ_TEST_HOLD_AFTER_COMMIT   block after the commit, before the acknowledgement
                                 (the whole process stops; a consumer killed right there);
  SAGAZ_TEST_FAIL_ONCE           raise on the first attempt (a file marks it was made);
  SAGAZ_TEST_FAIL_ALWAYS         raise on every attempt.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import SessionTransaction

from sagaz.outbox.brokers import ReceivedMessage

app_metadata = sa.MetaData()
effects = sa.Table(
    "consumer_effects",
    app_metadata,
    sa.Column("row", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(255), nullable=False),
    sa.Column("n", sa.Integer, nullable=False),
)


class HandlerFailedOnce(Exception):
    pass


def _holds(variable: str, n: object) -> bool:
    return os.environ.get(variable) == str(n)


def _mark(what: str) -> None:
    Path(os.environ["SAGAZ_TEST_MARKER"]).write_text(what)


def _first_failure() -> bool:
    """True the first time (a file remembers it across processes)."""
    marker = Path(os.environ["SAGAZ_TEST_MARKER"] + ".failed")
    if marker.exists():
        return False
    marker.write_text("failed")
    return True


async def record(session: AsyncSession, message: ReceivedMessage) -> None:
    n = message.payload["n"]
    await session.execute(sa.insert(effects).values(message_id=message.id, n=n))
    if _holds("SAGAZ_TEST_FAIL_ALWAYS", n):
        raise HandlerFailedOnce(f"message {n} always fails")
    if _holds("SAGAZ_TEST_FAIL_ONCE", n) and _first_failure():
        raise HandlerFailedOnce(f"message {n} fails on its first attempt")
    if _holds("SAGAZ_TEST_HOLD_BEFORE_COMMIT", n):
        _mark("before-commit")
        await asyncio.sleep(3600)
    if _holds("SAGAZ_TEST_HOLD_AFTER_COMMIT", n):
        # Not after_commit: SQLAlchemy fires that when the inbox's savepoint is released
        # too. The outermost transaction's end comes after its commit.
        @sa.event.listens_for(session.sync_session, "after_transaction_end")
        def hold(_session: object, transaction: SessionTransaction) -> None:
            if transaction.parent is None:
                _mark("after-commit")
                time.sleep(3600)  # the whole process stops here, the commit done, no ack
