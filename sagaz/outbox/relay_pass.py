"""What one relay pass decides without I/O: its result, the retry delay, and which events
of a published batch were confirmed and which failed (the relay is `sagaz.outbox.relay`)."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

from sagaz._util import backoff, describe, utcnow
from sagaz.outbox.claims import ClaimedEvent, Failure

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


def default_owner() -> str:
    """A claim owner unique to this relay instance: host, pid and a random suffix."""
    return f"{socket.gethostname()[:120]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def split_outcomes(
    events: Sequence[ClaimedEvent],
    results: Sequence[BaseException | None],
    *,
    base_backoff: float,
    max_backoff: float,
    who: str,
) -> tuple[list[int], list[Failure]]:
    """Split a published batch into confirmed seqs and failures. A failure counts an
    attempt, waits `sagaz._util.backoff` and stores the error escaped (NUL and lone surrogates,
    which PostgreSQL's text refuses); after a failed keyed event the rest of its key is
    held back (released without counting an attempt)."""
    now = utcnow()
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
                )
                published.append(event.seq)
            else:
                failures.append(Failure(event.seq, False, event.next_attempt_at))
            continue
        if error is None:
            published.append(event.seq)
            continue
        delay = backoff(event.attempts + 1, base_backoff, max_backoff)
        failures.append(Failure(event.seq, True, now + timedelta(seconds=delay), describe(error)))
        if key is not None:
            failed_keys.add(key)
    return published, failures
