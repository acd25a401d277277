"""The commit/rollback policy of a request's unit of work, written once for every adapter:
commit when the handler returned, roll back when it raised, close either way; a commit
that fails is rolled back and re-raised, so the adapter answers with an error, never with
the handler's success response."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

__all__ = ["COMMIT_FAILED_NOTE", "finish_session", "finish_session_sync"]

log = logging.getLogger("sagaz.integrations")

COMMIT_FAILED_NOTE = (
    "sagaz: the commit of the request's session failed after the handler returned; "
    "the transaction was rolled back and nothing of the request was saved"
)


async def finish_session(session: AsyncSession, error: BaseException | None = None) -> None:
    """End a request's unit of work: commit if the handler returned (`error` is None),
    roll back if it raised, and close the session either way.

    A commit that fails (a deferred constraint, a serialization failure, a lost
    connection) is rolled back and re-raised with a note, so the adapter turns it into
    an error response instead of the handler's success. A failure while rolling back or
    closing is logged and never hides the error that caused it.
    """
    try:
        if error is None:
            try:
                await session.commit()
            except BaseException as commit_error:
                commit_error.add_note(COMMIT_FAILED_NOTE)
                await _quietly(session.rollback, "rolling back after a failed commit")
                raise
        else:
            await _quietly(session.rollback, "rolling back after the handler raised")
    finally:
        await _quietly(session.close, "closing the request's session")


def finish_session_sync(session: Session, error: BaseException | None = None) -> None:
    """`finish_session` for a sync `Session` (same policy, same guarantees)."""
    try:
        if error is None:
            try:
                session.commit()
            except BaseException as commit_error:
                commit_error.add_note(COMMIT_FAILED_NOTE)
                _quietly_sync(session.rollback, "rolling back after a failed commit")
                raise
        else:
            _quietly_sync(session.rollback, "rolling back after the handler raised")
    finally:
        _quietly_sync(session.close, "closing the request's session")


async def _quietly(operation: Callable[[], Awaitable[None]], doing: str) -> None:
    try:
        await operation()
    except Exception:
        log.warning("sagaz: %s failed", doing, exc_info=True)


def _quietly_sync(operation: Callable[[], None], doing: str) -> None:
    try:
        operation()
    except Exception:
        log.warning("sagaz: %s failed", doing, exc_info=True)
