"""Records about single outbox events (the relay's, the consumers'), each carrying the
event's fields (`sagaz.logging.FIELDS`: event id, saga id, correlation id)."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence

from sagaz.logging import fields
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.common import ReceivedMessage
from sagaz.outbox.claims import ClaimedEvent
from sagaz.outbox.events import CORRELATION_HEADER

logger = logging.getLogger("sagaz.outbox.relay")

#: Dead-lettered events logged one by one per pass; the rest are counted in one record.
MAX_RECORDS = 20


def event_fields(message: OutboxMessage | ReceivedMessage) -> dict[str, str]:
    """``extra=`` of a record about the event `message` (published or received)."""
    return fields(
        event_id=message.id,
        saga_id=getattr(message, "saga_id", None),  # a received message does not carry it
        correlation_id=message.headers.get(CORRELATION_HEADER),
    )


def log_dead_letters(
    owner: str, claimed: Sequence[ClaimedEvent], dead: Collection[int], max_attempts: int
) -> None:
    """One ERROR record per event of `claimed` whose seq is in `dead` (at most
    `MAX_RECORDS`, then one counting the others): why it was dead-lettered - unreadable
    (the column named) or out of attempts."""
    shown = 0
    for event in claimed:
        if event.seq not in dead:
            continue
        if shown == MAX_RECORDS:
            logger.error("outbox relay %s: and %d more dead-lettered", owner, len(dead) - shown)
            return
        shown += 1
        reason = event.problem or f"after {max_attempts} attempts"
        logger.error(
            "outbox relay %s: dead-lettered event %s (seq %d, topic %s): %s",
            owner,
            event.message.id,
            event.seq,
            event.message.topic,
            reason,
            extra=event_fields(event.message),
        )
