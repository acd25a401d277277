"""`SagaWorker`: runs started sagas to completion, across crashes, under leases.

Guarantees:

* A saga is run by at most one worker at a time: it is claimed with a lease whose token
  fences every write (`LeaseLostError` stops a worker that lost it), and the lease is
  renewed while the saga runs.
* A saga whose worker died is taken over once its lease expires and resumed after its
  last completed step: completed steps' results are read back, not re-executed. Ordinary
  steps are therefore at-least-once (a step interrupted mid-way runs again);
  transactional steps (taking a `session`) are exactly-once in their database effects.
* A run knows its lease deadline by its own monotonic clock (from the start of the claim
  or renewal request, minus `lease_margin_seconds`): past it, it starts no step, no
  compensation and no commit, without asking the database, and stops (see
  `sagaz.run_context`).
* Give-up: a saga whose last `max_attempts` claims in a row made no progress (no step
  finished: its worker crashed, was killed or stalled each time) is given up. Claims
  that ended through a lost database connection or a shutdown do not count; each
  stalled claim delays the next one more (`claims.claim_backoff`). A given-up saga going
  forward is compensated (COMPENSATED, or FAILED if a compensation fails); one whose
  compensation keeps crashing is FAILED with the steps left undone listed, and can be
  resumed by an operator (`claims.resume_saga`).
* A saga row that cannot be read (its context not a JSON object, a step's result not
  valid JSON) fails alone: FAILED, its error naming the column; the others run.
* A saga whose name no running worker has registered is never dropped: it stays runnable
  and, after `unknown_saga_grace_seconds`, carries an error that says what is missing.
* `stop()` is graceful: claiming stops, in-flight sagas get `shutdown_grace_seconds` to
  finish, then are cancelled and their leases released for another worker.
* Database failures are logged on one line each (WARNING when a retry may get past them,
  else ERROR), without statement parameters; tracebacks only at DEBUG. A claim failing
  or a run's writes failing in a way retrying cannot fix (no privilege, no table) stops
  the worker (`run_until_stopped` raises it).

In-process runs go through the same code (`sagaz.worker.leased`): `run_one(saga_id)`
claims one saga and runs it here, `run_here(...)` records a new saga already leased to
this worker and runs it (`Saga.run` with a database); both hold the lease the whole run.

Wake-ups: a commit in this process that started sagas wakes the worker at once (the
post-commit signal); on PostgreSQL, LISTEN on `sagaz_sagas` wakes it when another process
commits (`listen=True`); `poll_interval` polling remains the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Iterable
from datetime import timedelta
from functools import partial
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import utcnow
from sagaz.engine import SagaEngine
from sagaz.journal import Fence, SagaSnapshot, TransitionListener
from sagaz.metrics import NO_METRICS, MetricsHooks
from sagaz.outbox.listen import NotificationListener
from sagaz.policy import RunOptions
from sagaz.registry import SagaRegistry, registry
from sagaz.signals import Subscription, saga_signal
from sagaz.store.failures import is_fatal, log_failure
from sagaz.store.statements import SAGA_CHANNEL
from sagaz.store.stores import AsyncSagaStore
from sagaz.worker import claims
from sagaz.worker.cancel import CancelWatch
from sagaz.worker.give_up import DEFAULT_MAX_ATTEMPTS, fail_saga, listeners_of
from sagaz.worker.leased import LeasedRuns

log = logging.getLogger("sagaz.worker")


class SagaWorker(LeasedRuns):
    """Claims runnable sagas from the database and runs them, `concurrency` at a time."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        store: AsyncSagaStore | None = None,
        sagas: SagaRegistry = registry,
        concurrency: int = 50,
        lease_seconds: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        unknown_saga_grace_seconds: float = 30.0,
        shutdown_grace_seconds: float = 10.0,
        options: RunOptions | None = None,
        listeners: Iterable[TransitionListener] = (),
        owner: str | None = None,
        listen: bool = True,
        lease_margin_seconds: float | None = None,
        metrics: MetricsHooks = NO_METRICS,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if lease_seconds <= 0 or poll_interval <= 0:
            raise ValueError("lease_seconds and poll_interval must be > 0")
        margin = lease_seconds / 10 if lease_margin_seconds is None else lease_margin_seconds
        if not 0 <= margin < lease_seconds:
            raise ValueError(f"lease_margin_seconds must be >= 0 and < lease_seconds, got {margin}")
        #: Subtracted from every lease on this process's clock (clock skew, time between
        #: the deadline check and the write reaching the database).
        self.lease_margin_seconds = margin
        self.engine = engine
        self.store = store or AsyncSagaStore(engine)
        self.sagas = sagas
        self.concurrency = concurrency
        self.lease_seconds = lease_seconds
        self.poll_interval = poll_interval
        self.max_attempts = max_attempts
        self.unknown_saga_grace_seconds = unknown_saga_grace_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.owner = owner or f"saga-worker-{uuid.uuid4().hex[:12]}"
        self.listen = listen
        self.metrics = metrics  # sagaz.metrics: lease losses, claim failures
        self._cancels = CancelWatch()  # operators' cancel requests: sagaz.worker.cancel
        listeners = (self._cancels, *listeners)
        self._saga_engine = SagaEngine(self.store, options or RunOptions(), tuple(listeners))
        self._running = {}
        self._definitions = {}
        self._renewer = None
        self._renewal_users = 0
        self._traces = {}  # stored trace contexts of claimed sagas (sagaz.tracing)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._polling = False
        self._fatal: Exception | None = None
        self.completed = 0
        #: Runs ended by a lost database connection (their claims are given back).
        self.interrupted = 0

    @property
    def in_flight(self) -> int:
        """How many sagas this worker is running right now."""
        return len(self._running)

    # -- lifecycle -----------------------------------------------------------------

    def stop(self) -> None:
        """Ask the worker to stop: no new claims; in-flight sagas finish or are released."""
        self._stopping.set()
        self._wake.set()

    async def run_until_stopped(self) -> None:
        """Claim and run sagas until `stop()`; then shut down gracefully.

        A failed claim that retrying may get past (the database restarting) is logged on
        one line and retried; one that it cannot fix (no privilege, no table: see
        `sagaz.store.failures.is_fatal`) - in a claim or in a run's own writes - is
        logged, in-flight sagas are shut down as by `stop()`, and the database error is
        raised."""
        subscription = saga_signal.subscribe()
        helpers = [
            asyncio.create_task(self._forward_signal(subscription), name="sagaz:saga-signal"),
        ]
        if self.listen and self.engine.dialect.name == "postgresql":
            listener = NotificationListener(self.engine, SAGA_CHANNEL, self._wake.set)
            helpers.append(asyncio.create_task(listener.run(), name="sagaz:saga-listen"))
        try:
            async with self._renewing():
                await self._poll()
        finally:
            subscription.close()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

    async def _poll(self) -> None:
        error_delay = 0.0
        self._polling, self._fatal = True, None
        try:
            while not self._stopping.is_set():
                try:
                    claimed = await self.claim_and_start()
                except Exception as error:
                    self.metrics.claim_failed()
                    if is_fatal(error):  # no privilege, no table...: stop, say why
                        log_failure(
                            log, error, "saga worker %s: claiming failed, stopping", self.owner
                        )
                        raise
                    # The database is down or restarting: keep running sagas, retry soon.
                    error_delay = min(max(error_delay * 2, 0.05), self.poll_interval)
                    log_failure(
                        log,
                        error,
                        "saga worker %s: claiming failed, retrying in %.2fs",
                        self.owner,
                        error_delay,
                    )
                    await self._sleep(error_delay)
                    continue
                error_delay = 0.0
                if self._stopping.is_set():
                    break
                if claimed and len(self._running) < self.concurrency:
                    continue  # there may be more waiting
                await self._sleep(self.poll_interval)
        finally:
            await self._shutdown()
            self._polling = False
        if self._fatal is not None:
            raise self._fatal

    def _stop_for(self, error: Exception) -> None:
        if self._polling and self._fatal is None:
            self._fatal = error
            self.stop()

    async def _forward_signal(self, subscription: Subscription) -> None:
        while True:
            if await subscription.wait(None):
                self._wake.set()

    async def _sleep(self, seconds: float) -> None:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            pass
        self._wake.clear()

    async def _shutdown(self) -> None:
        if self._running:
            tasks = [run.task for run in self._running.values()]
            await asyncio.wait(tasks, timeout=self.shutdown_grace_seconds)
        leftover = dict(self._running)
        for run in leftover.values():
            run.task.cancel()
        await asyncio.gather(*(run.task for run in leftover.values()), return_exceptions=True)
        if leftover:
            leases = {saga_id: run.token for saga_id, run in leftover.items()}
            try:
                await self._in_transaction(
                    partial(claims.release_leases, owner=self.owner, leases=leases, refund=True)
                )
            except Exception as error:
                log_failure(
                    log,
                    error,
                    "could not release %d in-flight sagas; their leases will expire",
                    len(leases),
                )
            else:
                log.info("released %d in-flight sagas for another worker", len(leases))

    # -- claiming ------------------------------------------------------------------

    async def claim_and_start(self) -> int:
        """Claim as many sagas as there are free slots and start running them."""
        free = self.concurrency - len(self._running)
        if free <= 0:
            return 0
        started = time.monotonic()  # before the request: the lease may start any time after
        now = utcnow()
        known = self.sagas.names()
        corrupt: list[claims.CorruptSaga] = []
        claimed: list[SagaSnapshot] = await self._in_transaction(
            partial(
                claims.claim_sagas,
                owner=self.owner,
                names=known,
                limit=free,
                lease_seconds=self.lease_seconds,
                now=now,
                corrupt=corrupt,
                cancelled=self._cancels.claimed,
                traces=self._traces,
            )
        )
        for bad in corrupt:
            fence = Fence(self.owner, bad.lease_token)
            listeners = listeners_of(self._runner, bad.saga_name, self._saga_engine)
            await fail_saga(self.store, bad.saga_id, bad.saga_name, fence, bad.reason, listeners)
        if not claimed and not corrupt:
            await self._in_transaction(
                partial(
                    claims.mark_unknown_sagas,
                    owner=self.owner,
                    known=known,
                    older_than=now - timedelta(seconds=self.unknown_saga_grace_seconds),
                    now=now,
                )
            )
        for snapshot in claimed:
            lease = self._lease(started)
            task = asyncio.create_task(
                self._run_claimed(snapshot, lease), name=f"sagaz:{snapshot.saga_id}"
            )
            self._track(snapshot, lease, task)
        return len(claimed) + len(corrupt)

    def _finished(self, saga_id: str, task: asyncio.Task[Any]) -> None:
        super()._finished(saga_id, task)
        self._wake.set()
