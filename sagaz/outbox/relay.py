"""The outbox relay: publishes committed outbox events through a broker.

One pass (`relay_once`) claims a batch of due events in one statement, publishes them
with one `publish_batch` call, and records the outcome in one transaction: one statement
marks the confirmed events published, one hands the others back with their next attempt
time (exponential backoff with jitter, stored in the row - nothing sleeps while holding a
claim) or dead-letters them after `max_attempts`. A broker outage counts no attempt: the
relay pauses (up to `max_connection_backoff`) instead, see `relay_pass`. Every mark is
fenced by the relay's `owner`: a relay whose claim was taken over changes nothing.

`run_until_stopped` repeats passes: back to back while batches come back full, otherwise
waiting for a wake-up - the in-process post-commit signal, PostgreSQL LISTEN/NOTIFY from
other processes, an event's retry time - or `poll_interval` at the latest. It also
deletes published events and inbox rows past their retention every `retention_interval`.

The claim is a lease of `claim_seconds` (5 s by default), renewed every third of it
while the broker publishes the batch: events claimed by a relay that died are claimable
again within `claim_seconds`. An event whose payload or headers cannot be read is
dead-lettered alone, its reason naming the column; the rest of its batch is published.

Delivery is at-least-once: an event is published again when its claim expires before it
was marked (a crash, a lost database connection, a relay stalled past its lease), so
consumers deduplicate by message id (see the consumer inbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import backoff, describe, utcnow
from sagaz.metrics import NO_METRICS, MetricsHooks
from sagaz.outbox import claims
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.claims import ClaimedEvent, Failure, Settled
from sagaz.outbox.event_logs import log_dead_letters
from sagaz.outbox.listen import NotificationListener
from sagaz.outbox.maintenance import RetentionResult, retain
from sagaz.outbox.relay_pass import PassResult, default_owner, split_outcomes
from sagaz.outbox.relay_publish import publish_claimed, wait_for
from sagaz.signals import Subscription, outbox_signal
from sagaz.store.failures import is_fatal, log_failure
from sagaz.store.statements import OUTBOX_CHANNEL

logger = logging.getLogger(__name__)

__all__ = ["OutboxRelay", "PassResult", "default_owner"]


class OutboxRelay:
    """Publishes the outbox of `engine` through `broker` (see the module docstring).

    Several relays - in one process or many - may share a database: claims never
    overlap, and events with the same key are published in the order they were written
    (their `seq`), even across relays. The relay connects the broker when it starts but
    does not close it: whoever created the broker closes it.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        broker: Broker,
        *,
        batch_size: int = 500,
        claim_seconds: float = 5.0,
        max_attempts: int = 10,
        base_backoff: float = 1.0,
        max_backoff: float = 300.0,
        max_connection_backoff: float = 5.0,
        poll_interval: float = 1.0,
        concurrency: int = 1,
        owner: str | None = None,
        listen: bool = True,
        published_retention: timedelta | None = timedelta(days=7),
        inbox_retention: timedelta | None = timedelta(days=7),
        retention_interval: float = 300.0,
        retention_batch_size: int = 1000,
        metrics: MetricsHooks = NO_METRICS,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if claim_seconds <= 0 or poll_interval <= 0 or retention_interval <= 0:
            raise ValueError("claim_seconds, poll_interval and retention_interval must be > 0")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if base_backoff < 0 or max_backoff < base_backoff or max_connection_backoff <= 0:
            raise ValueError("need 0 <= base_backoff <= max_backoff and max_connection_backoff > 0")
        self.engine = engine
        self.broker = broker
        self.batch_size = batch_size
        self.claim_seconds = claim_seconds
        self.max_attempts = max_attempts
        self.base_backoff = base_backoff
        self.max_backoff = max_backoff
        self.max_connection_backoff = max_connection_backoff
        self.poll_interval = poll_interval
        self.concurrency = concurrency
        self.owner = owner or default_owner()
        self.listen = listen and engine.dialect.name == "postgresql"
        self.published_retention = published_retention
        self.inbox_retention = inbox_retention
        self.retention_interval = retention_interval
        self.retention_batch_size = retention_batch_size
        self.metrics = metrics  # sagaz.metrics: publish latency, dead letters
        self.listener: NotificationListener | None = None
        """The LISTEN connection while running on PostgreSQL with `listen=True`."""
        self.idle = asyncio.Event()
        """Set while the running relay (all its passes) waits for a wake-up or a poll."""
        self._waiting = 0
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._running = False
        self._next_retry_at: datetime | None = None
        self._fatal: Exception | None = None  # a retention failure retrying cannot fix

    # -- one pass ------------------------------------------------------------------------

    async def relay_once(self) -> PassResult:
        """Claim one batch, publish it, record the outcome. Returns what happened.

        Raises only for database errors (claiming or recording); broker failures become
        retries. If recording fails after publishing, the claims expire and the events
        are published again (at-least-once).
        """
        return await self._pass(self.owner)

    async def _pass(self, owner: str) -> PassResult:
        now = utcnow()

        def claim(connection: sa.Connection) -> tuple[list[ClaimedEvent], int]:
            window = 2 * self.batch_size
            events = claims.claim_batch(
                connection,
                owner=owner,
                limit=self.batch_size,
                now=now,
                expires=now + timedelta(seconds=self.claim_seconds),
                window=window,
            )
            deferred = 0
            if len(events) < self.batch_size:
                deferred = claims.defer_blocked(connection, now=now, window=window)
            return events, deferred

        async with self.engine.begin() as connection:
            claimed, deferred = await connection.run_sync(claim)
        if not claimed:
            return PassResult(deferred=deferred)
        unreadable = [event for event in claimed if event.problem is not None]
        events = [event for event in claimed if event.problem is None]
        results = (
            await publish_claimed(
                self.engine, self.broker, events, owner=owner, claim_seconds=self.claim_seconds
            )
            if events
            else []
        )
        self.metrics.published(events, results)
        outcomes = split_outcomes(
            events,
            results,
            base_backoff=self.base_backoff,
            max_backoff=self.max_backoff,
            max_connection_backoff=self.max_connection_backoff,
            who=f"outbox relay {self.owner}: broker {type(self.broker).__name__}",
        )
        published, failures = outcomes.published, outcomes.failures
        failures += [
            Failure(event.seq, True, event.next_attempt_at, event.problem, final=True)
            for event in unreadable
        ]
        marked, settled = await self._record(owner, published, failures)
        retry_times = [
            f.next_attempt_at for f in failures if f.counted and f.seq in settled.retried
        ]
        if retry_times:
            earliest = min(retry_times)
            if self._next_retry_at is None or earliest < self._next_retry_at:
                self._next_retry_at = earliest
        if settled.dead:
            self.metrics.dead_lettered(len(settled.dead))
            log_dead_letters(self.owner, claimed, settled.dead, self.max_attempts)
        recorded = len(marked) + len(settled.retried) + len(settled.dead)
        if recorded < len(claimed):
            logger.warning(
                "outbox relay %s: %d event(s) were claimed by another relay before their "
                "outcome was recorded (claim_seconds=%s too short?)",
                self.owner,
                len(claimed) - recorded,
                self.claim_seconds,
            )
        return PassResult(
            claimed=len(claimed),
            published=len(marked),
            retried=len([f for f in failures if f.counted and f.seq in settled.retried]),
            dead=len(settled.dead),
            released=len([f for f in failures if not f.counted and f.seq in settled.retried]),
            fenced=len(claimed) - recorded,
            deferred=deferred,
            outage=outcomes.outage,
        )

    async def _record(
        self, owner: str, published: Sequence[int], failures: Sequence[Failure]
    ) -> tuple[set[int], Settled]:
        now = utcnow()

        def record(connection: sa.Connection) -> tuple[set[int], Settled]:
            marked = claims.mark_published(connection, owner=owner, seqs=published, now=now)
            settled = claims.settle_failures(
                connection, owner=owner, failures=failures, max_attempts=self.max_attempts
            )
            return marked, settled

        async with self.engine.begin() as connection:
            return await connection.run_sync(record)

    # -- the loop ------------------------------------------------------------------------

    async def run_until_stopped(self) -> None:
        """Relay until `stop()` is called (or the task is cancelled).

        Stopping finishes the batch in flight - publishing it and recording the outcome -
        and returns; a cancelled relay leaves its claims to expire. Database errors are
        logged on one line each (no statement parameters; tracebacks at DEBUG) and retried
        with growing delays (up to `poll_interval`), except those retrying cannot fix (no
        privilege, no table: `sagaz.store.failures.is_fatal`) - in a pass or in the
        retention - which stop the relay and are raised.
        """
        if self._running:
            raise RuntimeError("this OutboxRelay is already running")
        self._running = True
        wake = self._wake = asyncio.Event()
        if self._stopping:
            wake.set()
        subscription = outbox_signal.subscribe()
        stopped = asyncio.Event()
        retention = asyncio.create_task(
            self._retention_loop(stopped), name="sagaz:outbox-retention"
        )
        helpers = [
            asyncio.create_task(self._forward_signal(subscription), name="sagaz:outbox-signal")
        ]
        if self.listen:
            self.listener = NotificationListener(self.engine, OUTBOX_CHANNEL, wake.set)
            helpers.append(asyncio.create_task(self.listener.run(), name="sagaz:outbox-listen"))
        try:
            await self._connect_broker()
            await self._loop(wake)
        finally:
            for helper in helpers:
                helper.cancel()
            for helper in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await helper
            # Retention is not cancelled mid-statement: it stops after its current batch.
            stopped.set()
            await retention
            subscription.close()
            self.listener = None
            self._wake = None
            self._running = False
            self._stopping = False
            fatal, self._fatal = self._fatal, None
        if fatal is not None:
            raise fatal

    def stop(self) -> None:
        """Ask the running relay to finish its current batch and return. Thread-unsafe:
        call it on the relay's event loop (e.g. from a signal handler added with
        `loop.add_signal_handler`)."""
        self._stopping = True
        if self._wake is not None:
            self._wake.set()

    @property
    def running(self) -> bool:
        return self._running

    async def _connect_broker(self) -> None:
        try:
            await self.broker.connect()
        except Exception as error:
            # publish_batch reconnects by itself; failures until then become retries.
            logger.warning(
                "outbox relay %s: broker connect failed: %s", self.owner, describe(error)
            )

    async def _loop(self, wake: asyncio.Event) -> None:
        # Each pass in flight claims under an owner of its own, so fencing tells them apart.
        owners = [self.owner] + [f"{self.owner}#{n}" for n in range(1, self.concurrency)]
        outcomes = await asyncio.gather(
            *(self._lane(wake, owner) for owner in owners), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome

    async def _lane(self, wake: asyncio.Event, owner: str) -> None:
        error_delay = 0.0
        outages = 0
        while not self._stopping:
            wake.clear()
            try:
                result = await self._pass(owner)
            except Exception as error:
                if is_fatal(error):  # no privilege, no table...: stop every lane, say why
                    log_failure(logger, error, "outbox relay %s: pass failed, stopping", owner)
                    self.stop()
                    raise
                error_delay = min(max(error_delay * 2, 0.05), self.poll_interval)
                log_failure(
                    logger,
                    error,
                    "outbox relay %s: pass failed, retrying in %.2fs",
                    owner,
                    error_delay,
                )
                await self._wait(wake, error_delay)
                continue
            error_delay = 0.0
            if result.outage:
                # The broker is unreachable: wake-ups would only fail again; pause.
                pause = backoff(outages + 1, self.base_backoff, self.max_connection_backoff)
                outages += 1
                if outages == 1:
                    logger.warning(
                        "outbox relay %s: the broker is unreachable; retrying every %.1f s at "
                        "most (no attempt counted against the events)",
                        owner,
                        self.max_connection_backoff,
                    )
                await self._pause(wake, pause)
                continue
            if outages and result.published:
                logger.warning("outbox relay %s: the broker is reachable again", owner)
                outages = 0
            if result.claimed >= self.batch_size or result.dead or result.deferred:
                # More may be due at once (a dead-lettered event unblocks its key, deferred
                # events make room in the claim's window): go on, and wake the other passes.
                wake.set()
                await asyncio.sleep(0)
                continue
            await self._wait(wake, self._idle_timeout())

    def _idle_timeout(self) -> float:
        timeout = self.poll_interval
        if self._next_retry_at is not None:
            until_retry = (self._next_retry_at - utcnow()).total_seconds()
            if until_retry <= 0:
                self._next_retry_at = None
                return 0.0
            timeout = min(timeout, until_retry + 0.001)
        return timeout

    async def _pause(self, wake: asyncio.Event, seconds: float) -> None:
        """Wait `seconds` whatever wakes the relay, unless it is stopping."""
        deadline = asyncio.get_running_loop().time() + seconds
        while not self._stopping:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self._wait(wake, remaining)
            if not self._stopping:
                wake.clear()

    async def _wait(self, wake: asyncio.Event, seconds: float) -> None:
        if seconds <= 0:
            return
        self._waiting += 1
        if self._waiting == self.concurrency:
            self.idle.set()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await wake.wait()
        finally:
            self._waiting -= 1
            self.idle.clear()

    async def _forward_signal(self, subscription: Subscription) -> None:
        while True:
            await subscription.wait(None)
            if self._wake is not None:
                self._wake.set()

    async def _retention_loop(self, stopped: asyncio.Event) -> None:
        if self.published_retention is None and self.inbox_retention is None:
            return
        while not stopped.is_set():
            try:
                result = await self.apply_retention()
                if result.published or result.inbox:
                    logger.info(
                        "outbox relay %s: retention deleted %d published event(s) and %d "
                        "inbox row(s)",
                        self.owner,
                        result.published,
                        result.inbox,
                    )
            except Exception as error:
                if is_fatal(error):  # no privilege to delete, no table...: stop, say why
                    log_failure(
                        logger, error, "outbox relay %s: retention failed, stopping", self.owner
                    )
                    self._fatal = error
                    self.stop()
                    return
                log_failure(logger, error, "outbox relay %s: retention failed", self.owner)
            await wait_for(stopped, self.retention_interval)

    async def apply_retention(self) -> RetentionResult:
        """Delete published events and inbox rows past their retention, one committed
        batch of `retention_batch_size` rows per table at a time; a stopping relay stops
        between batches."""
        published_retention, inbox_retention = self.published_retention, self.inbox_retention
        totals = RetentionResult(published=0, inbox=0)
        while published_retention is not None or inbox_retention is not None:
            async with self.engine.connect() as connection:
                batch = await connection.run_sync(
                    retain,
                    published_retention=published_retention,
                    inbox_retention=inbox_retention,
                    batch_size=self.retention_batch_size,
                    max_batches=1,
                    commit_each_batch=True,
                )
            totals = RetentionResult(totals.published + batch.published, totals.inbox + batch.inbox)
            if batch.published < self.retention_batch_size:
                published_retention = None
            if batch.inbox < self.retention_batch_size:
                inbox_retention = None
            if self._stopping:
                break
        return totals
