"""Durable background runs: a saga recorded in the caller's transaction and run in this
process after that transaction committed (and, for a web request, after the response was
sent) - under a worker's lease, through `SagaWorker.run_one`, so no worker claims it
while it runs here, a worker takes it over if this process dies, and it never runs twice
at once.

* `BackgroundRun`: one recorded saga, waiting for its commit and for its release.
* `BackgroundSagaRunner`: records sagas (`record_in`, `record`) and runs them on its
  loop; owned by `sagaz.runtime.SagaRuntime`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from sagaz.saga import Saga
from sagaz.start import start_saga
from sagaz.store.unit_of_work import sync_session_of
from sagaz.types import SagaResult
from sagaz.worker import SagaWorker

__all__ = ["BackgroundRun", "BackgroundSagaRunner"]

log = logging.getLogger("sagaz.integrations")

_RUNS_KEY = "sagaz.integrations.background_runs"


class BackgroundRun:
    """A recorded saga that this process will run itself once two things happened: the
    transaction that recorded it committed (`mark_committed`, from the session's commit)
    and the adapter let it go (`release`, e.g. after the response was sent). A rollback
    discards it. Either call may come from any thread."""

    __slots__ = ("_committed", "_discarded", "_lock", "_released", "runner", "saga_id")

    def __init__(self, runner: BackgroundSagaRunner, saga_id: str, *, committed: bool) -> None:
        self.runner = runner
        self.saga_id = saga_id
        self._lock = threading.Lock()
        self._committed = committed
        self._released = False
        self._discarded = False

    def mark_committed(self) -> None:
        with self._lock:
            self._committed = True
            go = self._released and not self._discarded
        if go:
            self.runner.submit(self.saga_id)

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            go = self._committed and not self._discarded
        if go:
            self.runner.submit(self.saga_id)

    def discard(self) -> None:
        with self._lock:
            self._discarded = True


def _runs_after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return
    runs: list[BackgroundRun] | None = session.info.pop(_RUNS_KEY, None)
    for run in runs or ():
        run.mark_committed()


def _runs_after_transaction_end(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without committing (rolled back, or the session
    # closed): its runs never start. After a commit, `_runs_after_commit` took them.
    if transaction.parent is None:
        for run in session.info.pop(_RUNS_KEY, None) or ():
            run.discard()


# Registered once, on the sync Session class (reaching every AsyncSession too); each
# returns at once for a session with no background run.
event.listen(Session, "after_commit", _runs_after_commit)
event.listen(Session, "after_transaction_end", _runs_after_transaction_end)


class BackgroundSagaRunner:
    """Runs sagas this process recorded, in-process, through `worker.run_one`: the
    worker's own claim, lease renewal, fencing and failure handling.

    A saga a worker holds, that is finished, or whose transaction never committed is not
    run. A step that fails is the saga's business (compensation, final status); an
    unexpected failure gives the saga back to a worker and is logged. `close()` gives
    running sagas `shutdown_grace_seconds`, then cancels them and releases their leases.

    `submit` is thread-safe; `run` and `close` run on the runner's loop.
    """

    def __init__(
        self,
        worker: SagaWorker,
        *,
        loop: asyncio.AbstractEventLoop,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self.worker = worker
        self.loop = loop
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self._tasks: set[asyncio.Task[SagaResult | None]] = set()
        self._closing = False

    @property
    def in_flight(self) -> int:
        """How many sagas this runner is running right now."""
        return len(self._tasks)

    # -- recording ----------------------------------------------------------------------

    def record_in(
        self,
        session: Session | AsyncSession,
        saga: type[Saga] | Saga | str,
        context: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> tuple[str, BackgroundRun]:
        """`start_saga` through `session` (so it commits or rolls back with the caller's
        own writes) and a `BackgroundRun` that starts once that commit happened and the
        run is released. Performs no I/O."""
        saga_id = start_saga(session, saga, context, idempotency_key=idempotency_key)
        run = BackgroundRun(self, saga_id, committed=False)
        sync_session = sync_session_of(session, "run_saga_background")
        sync_session.info.setdefault(_RUNS_KEY, []).append(run)
        return saga_id, run

    async def record(
        self,
        saga: type[Saga] | Saga | str,
        context: Mapping[str, Any],
        *,
        idempotency_key: str | None = None,
    ) -> tuple[str, BackgroundRun]:
        """Record the saga in a short transaction of its own (committed on return)."""
        engine: AsyncEngine = self.worker.engine
        async with AsyncSession(engine) as session:
            saga_id = start_saga(session, saga, context, idempotency_key=idempotency_key)
            await session.commit()
        return saga_id, BackgroundRun(self, saga_id, committed=True)

    # -- running ------------------------------------------------------------------------

    def submit(self, saga_id: str) -> None:
        """Start running `saga_id` on the runner's loop (callable from any thread). After
        `close()` it does nothing: a worker will run the saga."""
        if self._closing or self.loop.is_closed():
            log.info("sagaz: saga %s is left for a worker (the runner is closed)", saga_id)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._spawn(saga_id)
        else:
            try:
                self.loop.call_soon_threadsafe(self._spawn, saga_id)
            except RuntimeError:  # the loop closed in between
                log.info("sagaz: saga %s is left for a worker (the loop is closed)", saga_id)

    def _spawn(self, saga_id: str) -> None:
        if self._closing:
            return
        task = self.loop.create_task(self.run(saga_id), name=f"sagaz:background:{saga_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, saga_id: str) -> SagaResult | None:
        """Claim `saga_id` and run it to its end under the lease (`SagaWorker.run_one`);
        None when it could not be claimed (not committed, finished, or another worker has
        it) or the run was stopped (lost lease, unexpected error: the saga is left to a
        worker)."""
        return await self.worker.run_one(saga_id)

    async def close(self) -> None:
        """Stop taking runs; give running ones the grace period, then cancel them (their
        leases are released for a worker). Idempotent."""
        self._closing = True
        tasks = set(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=self.shutdown_grace_seconds)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
