"""What one relay pass decides without I/O: its result, the retry delay, and which events
of a published batch were confirmed and which failed (the relay is `sagaz.outbox.relay`).

Failures are the message's or the broker's. A broker outage - no event of the batch
confirmed, every failure a lost connection (`BrokerConnectionError`, `OSError`) or a
later event of a failed key - is not the events' fault: they go back without counting
an attempt (an outage of any length dead-letters nothing) and the relay pauses instead
(`PassResult.outage`). Any other failure counts an attempt and waits its own backoff; a
lost connection in a batch the broker partly confirmed waits at most
`max_connection_backoff`, so the backlog flows again soon after the broker is back."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sagaz._util import backoff, describe, utcnow
from sagaz.outbox.brokers.common import BrokerConnectionError, EarlierMessageFailedError
from sagaz.outbox.claims import ClaimedEvent, Failure
from sagaz.outbox.event_logs import event_fields

logger = logging.getLogger("sagaz.outbox.relay")


@dataclass(frozen=True, slots=True)
class PassResult:
    """What one relay pass did."""

    claimed: int = 0
    published: int = 0
    retried: int = 0
    dead: int = 0
    released: int = 0
    """Events handed back untouched: they followed a failed event of their key."""
    fenced: int = 0
    """Events whose outcome was not recorded because another relay had claimed them."""
    deferred: int = 0
    """Events moved behind a failed (backing off) event of their key, out of the way."""
    outage: bool = False
    """The broker confirmed nothing and every failure was a lost connection: the events
    went back without counting an attempt, and the relay should pause before retrying."""


def default_owner() -> str:
    """A claim owner unique to this relay instance: host, pid and a random suffix."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


#: Failures that say the broker, not the message, failed.
CONNECTION_FAILURES: tuple[type[BaseException], ...] = (BrokerConnectionError, OSError)


def _describe_or_none(error: BaseException | None) -> str | None:
    return None if error is None else describe(error)


def is_outage(results: Sequence[BaseException | None]) -> bool:
    """True when the broker confirmed none of a batch and every failure was a lost
    connection (or a later event held back behind a failed one of its key)."""
    return (
        bool(results)
        and all(error is not None for error in results)
        and any(isinstance(error, CONNECTION_FAILURES) for error in results)
        and all(
            isinstance(error, (*CONNECTION_FAILURES, EarlierMessageFailedError))
            for error in results
        )
    )


@dataclass(frozen=True, slots=True)
class Outcomes:
    """A published batch, split: confirmed seqs, failures to hand back, and whether the
    batch met a broker outage (see the module docstring)."""

    published: list[int]
    failures: list[Failure]
    outage: bool


def split_outcomes(
    events: Sequence[ClaimedEvent],
    results: Sequence[BaseException | None],
    *,
    base_backoff: float,
    max_backoff: float,
    max_connection_backoff: float,
    who: str,
) -> Outcomes:
    """Split a published batch into confirmed seqs and failures.

    In an outage (`is_outage`) every event goes back uncounted, its error stored.
    Otherwise a failure counts an attempt, waits `sagaz._util.backoff` (capped at
    `max_connection_backoff` for a lost connection) and stores the error escaped (NUL
    and lone surrogates, which PostgreSQL's text refuses); after a failed keyed event
    the rest of its key is held back (released without counting an attempt)."""
    now = utcnow()
    if is_outage(results):
        return Outcomes(
            [],
            [
                Failure(
                    event.seq, False, event.next_attempt_at, (error and describe(error)) or None
                )
                for event, error in zip(events, results, strict=True)
            ],
            outage=True,
        )
    published: list[int] = []
    failures: list[Failure] = []
    failed_keys: set[str] = set()
    for event, error in zip(events, results, strict=True):
        key = event.message.key
        if key is not None and key in failed_keys:
            if error is None:
                logger.error(
                    "%s confirmed event %s after an earlier event of key %r failed "
                    "(it breaks the Broker ordering contract)",
                    who,
                    event.message.id,
                    key,
                    extra=event_fields(event.message),
                )
                published.append(event.seq)
            else:
                failures.append(Failure(event.seq, False, event.next_attempt_at))
            continue
        if error is None:
            published.append(event.seq)
            continue
        ceiling = max_backoff
        if isinstance(error, CONNECTION_FAILURES):
            ceiling = min(max_backoff, max_connection_backoff)
        delay = backoff(event.attempts + 1, min(base_backoff, ceiling), ceiling)
        failures.append(Failure(event.seq, True, now + timedelta(seconds=delay), describe(error)))
        if key is not None:
            failed_keys.add(key)
    return Outcomes(published, failures, outage=False)
