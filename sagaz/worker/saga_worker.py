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
  in a way retrying cannot fix stops the worker (`run_until_stopped` raises it).

Wake-ups: a commit in this process that started sagas wakes the worker at once (the
post-commit signal); on PostgreSQL, LISTEN on `sagaz_sagas` wakes it when another process
commits (`listen=True`); `poll_interval` polling remains the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import backoff, utcnow
from sagaz.definition import SagaDefinition
from sagaz.engine import SagaEngine
from sagaz.errors import (
    CorruptRowError,
    DatabaseUnavailableError,
    LeaseLostError,
    UnknownSagaError,
)
from sagaz.journal import (
    Fence,
    SagaSnapshot,
    TransitionListener,
)
from sagaz.outbox.listen import NotificationListener
from sagaz.policy import RunOptions
from sagaz.registry import SagaRegistry, registry
from sagaz.run_context import LeaseClock
from sagaz.signals import Subscription, saga_signal
from sagaz.store.failures import is_fatal, log_failure
from sagaz.store.statements import SAGA_CHANNEL
from sagaz.store.stores import AsyncSagaStore, is_connection_error
from sagaz.types import SagaStatus
from sagaz.worker import claims
from sagaz.worker.cancel import CancelWatch
from sagaz.worker.give_up import (
    DEFAULT_MAX_ATTEMPTS,
    abandon_compensation,
    fail_saga,
    give_up_reason,
)

log = logging.getLogger("sagaz.worker")


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class _Run:
    task: asyncio.Task[None]
    token: int
    lease: LeaseClock


class SagaWorker:
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
        self._cancels = CancelWatch()  # operators' cancel requests: sagaz.worker.cancel
        listeners = (self._cancels, *listeners)
        self._saga_engine = SagaEngine(self.store, options or RunOptions(), tuple(listeners))
        self._running: dict[str, _Run] = {}
        self._definitions: dict[str, tuple[object, SagaDefinition, SagaEngine]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
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
        `sagaz.store.failures.is_fatal`) is logged, in-flight sagas are shut down as by
        `stop()`, and the database error is raised."""
        subscription = saga_signal.subscribe()
        helpers = [
            asyncio.create_task(self._forward_signal(subscription), name="sagaz:saga-signal"),
            asyncio.create_task(self._renew_leases(), name="sagaz:saga-leases"),
        ]
        if self.listen and self.engine.dialect.name == "postgresql":
            listener = NotificationListener(self.engine, SAGA_CHANNEL, self._wake.set)
            helpers.append(asyncio.create_task(listener.run(), name="sagaz:saga-listen"))
        error_delay = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    claimed = await self.claim_and_start()
                except Exception as error:
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
            subscription.close()
            await self._shutdown()
            for helper in helpers:
                helper.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)

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
            )
        )
        for bad in corrupt:
            fence = Fence(self.owner, bad.lease_token)
            await fail_saga(self.store, bad.saga_id, bad.saga_name, fence, bad.reason)
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
            lease = LeaseClock(self.lease_seconds, self.lease_margin_seconds, started)
            task = asyncio.create_task(
                self._run_one(snapshot, lease), name=f"sagaz:{snapshot.saga_id}"
            )
            self._running[snapshot.saga_id] = _Run(task, snapshot.lease_token, lease)
            task.add_done_callback(partial(self._finished, snapshot.saga_id))
        return len(claimed) + len(corrupt)

    def _finished(self, saga_id: str, _task: asyncio.Task[None]) -> None:
        self._running.pop(saga_id, None)
        self._cancels.forget(saga_id)
        self._wake.set()

    async def _in_transaction(self, operation: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as connection:
            return await connection.run_sync(operation)

    # -- running -------------------------------------------------------------------

    async def _run_one(self, snapshot: SagaSnapshot, lease: LeaseClock) -> None:
        fence = Fence(self.owner, snapshot.lease_token)
        try:
            cancel = self._cancels.give_up(snapshot.saga_id)  # an operator's cancel request
            give_up = cancel or give_up_reason(snapshot, self.max_attempts)
            if give_up is not None and snapshot.status is SagaStatus.COMPENSATING:
                await abandon_compensation(self.store, snapshot, fence, lease, give_up)
                return
            if give_up is not None and cancel is None:
                log.error("saga %s %s: %s", snapshot.saga_name, snapshot.saga_id, give_up)
            resumed = snapshot.status is not SagaStatus.PENDING
            definition, saga_engine = self._runner(snapshot.saga_name)
            result = await saga_engine.run(
                definition,
                {},
                saga_id=snapshot.saga_id,
                fence=fence,
                snapshot=None if resumed else snapshot,
                lease=lease,
                give_up=give_up,
            )
            self.completed += 1
            log.debug("saga %s %s: %s", snapshot.saga_name, snapshot.saga_id, result.status)
        except LeaseLostError:
            if snapshot.saga_id in self._cancels.stopped:  # to be claimed and compensated
                await self._release(snapshot.saga_id, snapshot.lease_token)
                return
            log.warning("lost the lease of saga %s; another worker owns it now", snapshot.saga_id)
        except asyncio.CancelledError:
            raise
        except UnknownSagaError:
            log.error("saga %s vanished from the registry; releasing it", snapshot.saga_id)
            await self._release(snapshot.saga_id, snapshot.lease_token)
        except CorruptRowError as error:
            await fail_saga(self.store, snapshot.saga_id, snapshot.saga_name, fence, str(error))
        except Exception as error:
            if isinstance(error, DatabaseUnavailableError) or is_connection_error(error):
                # The database went away (restart, network): not the saga's doing.
                self.interrupted += 1
                log_failure(
                    log,
                    error,
                    "running saga %s stopped, the database connection failed",
                    snapshot.saga_id,
                )
                await self._release_after_outage(snapshot.saga_id, snapshot.lease_token, lease)
                return
            # Not a step failure (those are the saga's business) but e.g. its journal
            # writes failing: retry later, backing off so that a saga that fails this way
            # every time does not spin through its max_attempts claims.
            delay = backoff(snapshot.attempts, 1.0, 60.0)
            log_failure(
                log,
                error,
                "running saga %s failed; releasing it for a retry in %.1fs",
                snapshot.saga_id,
                delay,
            )
            await self._release(snapshot.saga_id, snapshot.lease_token, retry_in=delay)

    def _runner(self, name: str) -> tuple[SagaDefinition, SagaEngine]:
        """The definition registered under `name` and the engine that runs it, built once
        per registered source (a saga class is instantiated once, not per run).

        A saga bound to a `SagaConfig` (`Saga(name, config=...)`) runs with that config's
        run options and listeners (after the worker's own listeners); any other saga with
        the worker's `options`."""
        source = self.sagas.source(name)
        cached = self._definitions.get(name)
        if cached is None or cached[0] is not source:
            saga = self.sagas.resolve(name)
            engine = self._saga_engine.for_config(saga.config)
            cached = self._definitions[name] = (source, saga.definition, engine)
        return cached[1], cached[2]

    async def _give_back(
        self, saga_id: str, token: int, *, retry_in: float = 0.0, refund: bool = False
    ) -> None:
        not_before = utcnow() + timedelta(seconds=retry_in) if retry_in else None
        await self._in_transaction(
            partial(
                claims.release_leases,
                owner=self.owner,
                leases={saga_id: token},
                not_before=not_before,
                refund=refund,
            )
        )

    async def _release(self, saga_id: str, token: int, *, retry_in: float = 0.0) -> None:
        try:
            await self._give_back(saga_id, token, retry_in=retry_in)
        except Exception as error:
            log_failure(log, error, "could not release saga %s; its lease will expire", saga_id)

    async def _release_after_outage(self, saga_id: str, token: int, lease: LeaseClock) -> None:
        """Give the saga back with its claim refunded, retrying while the database is away
        and the lease is still ours (renewals keep extending it once the database is back);
        otherwise the lease expires and the claim counts as stalled."""
        delay = 0.05
        while lease.held():
            try:
                await self._give_back(saga_id, token, refund=True)
                return
            except Exception:
                await asyncio.sleep(max(0.0, min(delay, lease.remaining())))
                delay = min(delay * 2, 1.0)

    async def _finished_meanwhile(self, leases: dict[str, int], held: set[str]) -> set[str]:
        missing = {saga_id: token for saga_id, token in leases.items() if saga_id not in held}
        if not missing:
            return set()
        try:
            return await self._in_transaction(partial(claims.released_by_holder, leases=missing))
        except Exception as error:
            log_failure(log, error, "checking finished sagas failed; will retry")
            return set(missing)  # decided at the next renewal

    async def _renew_leases(self) -> None:
        interval = self.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            running = dict(self._running)
            if not running:
                continue
            leases = {saga_id: run.token for saga_id, run in running.items()}
            started = time.monotonic()  # the renewed leases start no earlier than this
            try:
                held = await self._in_transaction(
                    partial(
                        claims.renew_leases,
                        owner=self.owner,
                        leases=leases,
                        lease_seconds=self.lease_seconds,
                        now=utcnow(),
                        cancelled=self._cancels.renewed,
                    )
                )
            except Exception as error:
                # The deadlines stay where the last renewal put them: a run past its own
                # deadline stops by itself.
                log_failure(log, error, "renewing leases failed; will retry")
                continue
            finished = await self._finished_meanwhile(leases, held)
            for saga_id, run in running.items():
                if saga_id in held:
                    run.lease.granted(started)
                    continue
                if saga_id in finished:
                    continue  # its own run gave the lease back (it finished): not taken over
                run.lease.lost()
                if self._running.get(saga_id) is run:
                    log.warning("lease of saga %s was taken over; stopping its run", saga_id)
                    run.task.cancel()
            self._cancels.stop_requested({i: run.lease for i, run in running.items()})
