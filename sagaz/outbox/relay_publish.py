"""One batch handed to the broker while its claim is kept alive (used by the relay)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import describe, utcnow
from sagaz.outbox import claims
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.claims import ClaimedEvent
from sagaz.store.failures import log_failure
from sagaz.tracing import publish_traced

logger = logging.getLogger("sagaz.outbox.relay")


async def publish_claimed(
    engine: AsyncEngine,
    broker: Broker,
    events: Sequence[ClaimedEvent],
    *,
    owner: str,
    claim_seconds: float,
) -> list[BaseException | None]:
    """Publish `events` with one `publish_batch` call; one result per event (None when
    the broker confirmed it). Never raises for a broker failure: `publish_batch` raising,
    or returning the wrong number of results, fails every event of the batch. While the
    broker works, `owner`'s claim on the events is renewed every third of
    `claim_seconds`, so a slow broker does not let another relay take them over."""
    published = asyncio.Event()
    renewer = asyncio.create_task(
        _renew_claims(engine, owner, events, published, claim_seconds), name="sagaz:outbox-renew"
    )
    try:
        # each message in a producer span, its context sent as traceparent (sagaz.tracing)
        results = list(await publish_traced(broker, [event.message for event in events]))
    except Exception as error:
        logger.warning("outbox relay %s: publish_batch raised %s", owner, describe(error))
        return [error] * len(events)
    finally:
        # Not cancelled mid-statement: a renewal in flight finishes first.
        published.set()
        await renewer
    if len(results) != len(events):
        mismatch = RuntimeError(
            f"broker {type(broker).__name__} returned {len(results)} results "
            f"for {len(events)} messages"
        )
        logger.error("outbox relay %s: %s", owner, mismatch)
        return [mismatch] * len(events)
    return results


async def _renew_claims(
    engine: AsyncEngine,
    owner: str,
    events: Sequence[ClaimedEvent],
    done: asyncio.Event,
    claim_seconds: float,
) -> None:
    seqs = [event.seq for event in events]
    while seqs and not await wait_for(done, claim_seconds / 3):
        try:
            async with engine.begin() as connection:
                held = await connection.run_sync(
                    claims.renew_claims,
                    owner=owner,
                    seqs=seqs,
                    expires=utcnow() + timedelta(seconds=claim_seconds),
                )
        except Exception as error:
            log_failure(logger, error, "outbox relay %s: renewing claims failed", owner)
            continue
        seqs = [seq for seq in seqs if seq in held]


async def wait_for(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set or `seconds` pass; True if it was set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
