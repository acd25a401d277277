"""Running one claimed saga under its lease: the one code path of every durable run.

The polling `SagaWorker` starts its claims here, and so do in-process runs: a saga a web
adapter recorded and runs after the response (`SagaWorker.run_one`), and `Saga.run`
with a config that has a database (`SagaWorker.run_here`). Either way the saga is held
by a lease whose token fences every write, renewed every third of `lease_seconds` while
it runs, and given back when the run ends - so no worker claims a live run, a run whose
lease was taken over stops writing, and a run whose process died is resumed by a worker
once its lease expired.

How a run ends (the same for every caller):

* finished (COMPLETED, COMPENSATED, FAILED: a step failure is the saga's business, the
  engine records it): the last write gives the lease back;
* a lost lease (a fenced write refused, or a renewal that found another owner): it stops
  and writes nothing more;
* a lost database connection: the lease is given back, the claim refunded (not counted);
* the saga missing from the registry: the lease is given back at once;
* an unreadable row: the saga is FAILED with the reason;
* a database failure retrying cannot fix (no privilege, a missing table: `is_fatal`):
  the lease is given back with the claim refunded, and the polling worker stops and
  raises it (an in-process run only logs it);
* any other error (e.g. the journal's writes failing): the lease is given back with a
  backoff before the next claim;
* cancelled: the polling worker's shutdown releases its leases; an in-process run
  releases its own, refunded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._json import ensure_json_object
from sagaz._util import backoff, random_uuid, utcnow
from sagaz.context import SagaContextManager, current_correlation_id
from sagaz.definition import SagaDefinition
from sagaz.engine import SagaEngine
from sagaz.errors import (
    CorruptRowError,
    DatabaseUnavailableError,
    LeaseLostError,
    UnknownSagaError,
)
from sagaz.journal import Fence, SagaSnapshot, TransitionListener
from sagaz.logging import bind_saga, saga_fields
from sagaz.logging import fields as log_fields
from sagaz.metrics import NO_METRICS, MetricsHooks
from sagaz.registry import SagaRegistry
from sagaz.run_context import LeaseClock
from sagaz.store.failures import is_fatal, log_failure
from sagaz.store.operations import pending_saga_row
from sagaz.store.stores import AsyncSagaStore, is_connection_error
from sagaz.tracing import current_trace_context, saga_run_span
from sagaz.types import SagaResult, SagaStatus
from sagaz.worker import claims
from sagaz.worker.cancel import CancelWatch
from sagaz.worker.give_up import abandon_compensation, fail_saga, give_up_reason, listeners_of

if TYPE_CHECKING:
    from sagaz.config import SagaConfig

log = logging.getLogger("sagaz.worker")

T = TypeVar("T")

#: A saga's definition and the engine that runs it.
Runner = tuple[SagaDefinition, SagaEngine]


@dataclass(frozen=True, slots=True)
class _Run:
    task: asyncio.Task[Any]
    token: int
    lease: LeaseClock


class LeasedRuns:
    """Claims one saga at a time and runs claimed sagas under their leases (the base of
    `SagaWorker`, which sets the attributes below and adds the polling loop)."""

    engine: AsyncEngine
    store: AsyncSagaStore
    sagas: SagaRegistry
    owner: str
    lease_seconds: float
    lease_margin_seconds: float
    max_attempts: int
    completed: int
    interrupted: int
    _saga_engine: SagaEngine
    _cancels: CancelWatch
    _traces: dict[str, str]
    _running: dict[str, _Run]
    _definitions: dict[str, tuple[object, SagaDefinition, SagaEngine]]
    _renewer: asyncio.Task[None] | None
    _renewal_users: int
    metrics: MetricsHooks = NO_METRICS

    # -- in-process runs -------------------------------------------------------------

    async def run_one(self, saga_id: str) -> SagaResult | None:
        """Claim the saga `saga_id` (registered under its name) and run it to its end
        here, exactly as the polling loop runs a saga it claimed.

        Returns None - having run nothing - when it cannot be claimed (not committed,
        finished, or leased to another worker), and None when the run did not finish
        (lost lease, unexpected error: see the module docstring; the saga is left to a
        worker). Raises CancelledError when cancelled, after giving the lease back."""
        snapshot, lease = await self._claim(claims.claim_saga, saga_id=saga_id, now=utcnow())
        if snapshot is None:
            log.debug("saga %s is not claimable here; a worker has or had it", saga_id)
            return None
        return await self._run_inline(snapshot, lease, None, reraise=False)

    async def run_here(
        self,
        definition: SagaDefinition,
        context: Mapping[str, Any],
        *,
        saga_id: str | None = None,
        config: SagaConfig | None = None,
        listeners: Iterable[TransitionListener] = (),
    ) -> SagaResult:
        """Record `definition` as a new saga leased to this worker and run it here, to its
        end: `Saga.run` with a config that has a database.

        The row is inserted and leased in one transaction, so no worker can claim it
        while it runs. With the id of an existing saga, that saga is claimed and resumed
        (completed steps are not run again) - or, when finished, its result returned.
        Runs with `config`'s run options and listeners (then `listeners`) when given.

        Raises InvalidContextError before any I/O for a context that is not JSON;
        LeaseLostError when another worker holds the saga or takes it over; and, after
        giving the lease back, any error that stopped the run (a lost database, a
        journal write that failed) or CancelledError."""
        document = ensure_json_object(context, "context")
        row = pending_saga_row(
            saga_id or random_uuid(),
            definition.name,
            document,
            idempotency_key=None,
            correlation_id=current_correlation_id(),
            now=utcnow(),
            trace_context=current_trace_context(),
        )
        engine = self._saga_engine.for_config(config)
        extra = tuple(listeners)
        if extra:
            engine = SagaEngine(engine.journal, engine.options, (*engine.listeners, *extra))
        snapshot, lease = await self._claim(claims.record_and_claim, row=row, now=row["created_at"])
        if snapshot is not None:
            result = await self._run_inline(snapshot, lease, (definition, engine), reraise=True)
            if result is not None:
                return result
        stored = await self.store.load(str(row["id"]))
        if stored is None or not stored.status.is_terminal:
            owner = "nobody" if stored is None else stored.lease_owner
            raise LeaseLostError(f"saga {row['id']} is being run by another worker ({owner})")
        return await engine.run(definition, {}, saga_id=stored.saga_id, snapshot=stored)

    def _lease(self, started: float) -> LeaseClock:
        return LeaseClock(self.lease_seconds, self.lease_margin_seconds, started)

    async def _claim(
        self, claim: Callable[..., SagaSnapshot | None], **arguments: Any
    ) -> tuple[SagaSnapshot | None, LeaseClock]:
        """`claim` (a claim of one saga in `claims`) for this worker, in a transaction,
        and the lease's clock, started before the request was sent."""
        started = time.monotonic()
        arguments.setdefault("traces", self._traces)  # the stored trace context, for the run
        snapshot = await self._in_transaction(
            partial(claim, owner=self.owner, lease_seconds=self.lease_seconds, **arguments)
        )
        return snapshot, self._lease(started)

    async def _run_inline(
        self, snapshot: SagaSnapshot, lease: LeaseClock, runner: Runner | None, *, reraise: bool
    ) -> SagaResult | None:
        """Run a saga claimed for the caller in a task of its own (which a renewal that
        finds the lease taken over cancels), renewing its lease meanwhile."""
        saga_id = snapshot.saga_id
        async with self._renewing():
            task = asyncio.create_task(
                self._run_claimed(snapshot, lease, runner, reraise=reraise),
                name=f"sagaz:{saga_id}",
            )
            self._track(snapshot, lease, task)
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if not task.done():  # the caller was cancelled, not the run
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
                    await self._release(saga_id, snapshot.lease_token, refund=True)
                    raise
                if lease.held():
                    raise
            message = f"saga {saga_id}: its lease was taken over by another worker"
            if reraise:
                raise LeaseLostError(message)
            log.warning("%s; stopped its run", message, extra=saga_fields(snapshot))
            return None

    def _track(self, snapshot: SagaSnapshot, lease: LeaseClock, task: asyncio.Task[Any]) -> None:
        self._running[snapshot.saga_id] = _Run(task, snapshot.lease_token, lease)
        task.add_done_callback(partial(self._finished, snapshot.saga_id))

    def _finished(self, saga_id: str, _task: asyncio.Task[Any]) -> None:
        self._running.pop(saga_id, None)
        self._cancels.forget(saga_id)
        self._traces.pop(saga_id, None)

    # -- one claimed run ---------------------------------------------------------------

    async def _run_claimed(
        self,
        snapshot: SagaSnapshot,
        lease: LeaseClock,
        runner: Runner | None = None,
        *,
        reraise: bool = False,
    ) -> SagaResult | None:
        """Run a claimed saga to its end; on failure, end it as the module docstring says
        and return None (or, with `reraise`, raise the error)."""
        fence = Fence(self.owner, snapshot.lease_token)
        bind_saga(snapshot.saga_id, snapshot.saga_name)  # this task's records name the saga
        scope = (
            SagaContextManager.scope(snapshot.correlation_id)
            if snapshot.correlation_id
            else contextlib.nullcontext()
        )
        span = saga_run_span(snapshot, self._traces.pop(snapshot.saga_id, None))
        try:
            cancel = self._cancels.give_up(snapshot.saga_id)  # an operator's cancel request
            give_up = cancel or give_up_reason(snapshot, self.max_attempts)
            if give_up is not None and snapshot.status is SagaStatus.COMPENSATING:
                listeners = listeners_of(self._runner, snapshot.saga_name, self._saga_engine)
                await abandon_compensation(self.store, snapshot, fence, lease, give_up, listeners)
                return None
            if give_up is not None and cancel is None:
                log.error("saga %s %s: %s", snapshot.saga_name, snapshot.saga_id, give_up)
            resumed = snapshot.status is not SagaStatus.PENDING
            definition, saga_engine = runner or self._runner(snapshot.saga_name)
            with scope, span:
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
            return result
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._end_failed_run(snapshot, fence, lease, error)
            if reraise:
                raise
            return None

    async def _end_failed_run(
        self, snapshot: SagaSnapshot, fence: Fence, lease: LeaseClock, error: Exception
    ) -> None:
        saga_id, token = snapshot.saga_id, snapshot.lease_token
        if isinstance(error, LeaseLostError) and saga_id in self._cancels.stopped:
            await self._release(saga_id, token)  # stopped for a cancel: claimed, compensated
        elif isinstance(error, LeaseLostError):
            self.metrics.lease_lost()
            log.warning(
                "lost the lease of saga %s; another worker owns it now",
                saga_id,
                extra=saga_fields(snapshot),
            )
        elif isinstance(error, UnknownSagaError):
            log.error(
                "saga %s vanished from the registry; releasing it",
                saga_id,
                extra=saga_fields(snapshot),
            )
            await self._release(saga_id, token)
        elif isinstance(error, CorruptRowError):
            listeners = listeners_of(self._runner, snapshot.saga_name, self._saga_engine)
            await fail_saga(self.store, saga_id, snapshot.saga_name, fence, str(error), listeners)
        elif isinstance(error, DatabaseUnavailableError) or is_connection_error(error):
            # The database went away (restart, network): not the saga's doing.
            self.interrupted += 1
            log_failure(
                log, error, "running saga %s stopped, the database connection failed", saga_id
            )
            await self._release_after_outage(saga_id, token, lease)
        elif is_fatal(error):
            # No privilege, no table...: not the saga's doing, and no retry fixes it.
            log_failure(log, error, "running saga %s failed, stopping", saga_id)
            await self._release(saga_id, token, refund=True)
            self._stop_for(error)
        else:
            # Not a step failure (those are the saga's business) but e.g. its journal
            # writes failing: retry later, backing off so that a saga that fails this way
            # every time does not spin through its max_attempts claims.
            delay = backoff(snapshot.attempts, 1.0, 60.0)
            message = "running saga %s failed; releasing it for a retry in %.1fs"
            log_failure(log, error, message, saga_id, delay)
            await self._release(saga_id, token, retry_in=delay)

    def _stop_for(self, error: Exception) -> None:
        """A run failed in a way retrying cannot fix; the polling `SagaWorker` stops."""

    def _runner(self, name: str) -> Runner:
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

    # -- giving leases back ------------------------------------------------------------

    async def _in_transaction(self, operation: Callable[[Connection], T]) -> T:
        async with self.engine.begin() as connection:
            return await connection.run_sync(operation)

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

    async def _release(
        self, saga_id: str, token: int, *, retry_in: float = 0.0, refund: bool = False
    ) -> None:
        try:
            await self._give_back(saga_id, token, retry_in=retry_in, refund=refund)
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

    # -- renewing leases ---------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _renewing(self) -> AsyncIterator[None]:
        """Keep renewing the leases of running sagas while at least one caller is inside
        (the polling loop, in-process runs): one renewal task for all of them."""
        self._renewal_users += 1
        if self._renewer is None:
            self._renewer = asyncio.create_task(self._renew_leases(), name="sagaz:saga-leases")
        try:
            yield
        finally:
            self._renewal_users -= 1
            renewer = self._renewer
            if self._renewal_users == 0 and renewer is not None:
                self._renewer = None
                renewer.cancel()
                await asyncio.gather(renewer, return_exceptions=True)

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
                    self.metrics.lease_lost()
                    log.warning(
                        "lease of saga %s was taken over; stopping its run",
                        saga_id,
                        extra=log_fields(saga_id=saga_id),
                    )
                    run.task.cancel()
            self._cancels.stop_requested({i: run.lease for i, run in running.items()})
