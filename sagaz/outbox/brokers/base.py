"""What the outbox relay needs from a broker.

A broker publishes a batch and says, per message, whether the broker confirmed it. A
message it cannot confirm (connection lost mid-batch, a nack, a timeout) is reported as
failed and the relay retries it later: publishing is at-least-once, and the outbox
event id travels with every message (as the broker's message id or dedup header) so
consumers - or the broker itself, where it deduplicates - can drop repeats.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

#: Header carrying the outbox event id on brokers without a native message id field.
MESSAGE_ID_HEADER = "sagaz-message-id"


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One outbox event as handed to a broker.

    `id` is the outbox event id (a UUID string): use it as the broker's message id /
    dedup key. `headers` already holds the correlation id (`correlation-id`) when there
    was one. `payload` is any JSON value; brokers send it JSON-encoded (UTF-8).
    """

    id: str
    topic: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    created_at: datetime | None = None
    saga_id: str | None = None


@runtime_checkable
class Broker(Protocol):
    """A connection to a message broker the outbox relay publishes through."""

    async def connect(self) -> None:
        """Open the connection. Idempotent; publish_batch reconnects on its own too."""

    async def publish_batch(
        self, messages: Sequence[OutboxMessage]
    ) -> Sequence[BaseException | None]:
        """Publish `messages` and return, per message, None when the broker confirmed
        it or the error that prevented confirmation.

        Must not raise for a per-message or connection failure (return the errors
        instead). Messages with the same key must reach the broker in the given order: a
        message is sent only after the previous one of its key was confirmed, and from the
        first unconfirmed one on, the later ones of its key are not sent and are reported
        failed (`EarlierMessageFailedError`; `BatchOutcomes` in `common.py` does this).
        """

    async def close(self) -> None:
        """Release the connection. Idempotent."""
