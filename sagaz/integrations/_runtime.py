"""The sagaz runtime an adapter starts and stops with its application, and the runner
behind durable background runs (re-exported by `sagaz.integrations._base`).

* `SagaRuntime`: the config's engines and pools, an optional in-process `SagaWorker` and
  `OutboxRelay`, and a `BackgroundSagaRunner`; `stop()` leaves no connection, task or
  thread behind.
* `BackgroundSagaRunner` / `BackgroundRun`: a saga recorded in the request's transaction
  and run in this process after that transaction committed and the response was sent,
  under a worker's lease - so a worker takes it over if this process dies, and it never
  runs twice at once.
* `find_runtime`: the running runtime for a call that has no request at hand.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, SessionTransaction, sessionmaker

from sagaz.config import SagaConfig
from sagaz.context import SagaContextManager
from sagaz.engine import SagaEngine
from sagaz.errors import ConfigurationError, LeaseLostError
from sagaz.journal import Fence, utcnow
from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.relay import OutboxRelay
from sagaz.registry import SagaRegistry, registry
from sagaz.saga import Saga
from sagaz.start import start_saga
from sagaz.store.failures import log_failure
from sagaz.store.unit_of_work import sync_session_of
from sagaz.types import SagaResult, SagaStatus
from sagaz.worker import SagaWorker, claims

__all__ = ["BackgroundRun", "BackgroundSagaRunner", "SagaRuntime", "find_runtime"]

log = logging.getLogger("sagaz.integrations")
T = TypeVar("T")

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
    """Runs sagas this process recorded, in-process, under the same lease a worker takes.

    A run first claims its saga (`claims.claim_saga`): if a worker holds it, or it is
    finished, or its transaction never committed, nothing runs. Otherwise it runs under
    that lease, renewed every third of `lease_seconds`, with every write fenced - so a
    saga never runs twice at once, and if this process dies the lease expires and a
    `sagaz worker` resumes the saga after its last completed step. A step that fails is
    recorded on the saga by the engine (compensation, final status, error); an
    unexpected failure (a lost database) releases the lease at once for a worker and is
    logged at ERROR. `close()` gives running sagas `shutdown_grace_seconds`, then cancels
    them and releases their leases.

    `submit` is thread-safe; `run` and `close` run on the runner's loop.
    """

    def __init__(
        self,
        config: SagaConfig,
        *,
        loop: asyncio.AbstractEventLoop,
        sagas: SagaRegistry = registry,
        owner: str | None = None,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self.config = config
        self.loop = loop
        self.sagas = sagas
        self.owner = owner or f"sagaz-background-{uuid.uuid4().hex[:12]}"
        self.lease_seconds = config.lease_seconds
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self._engine = SagaEngine(config.store, config.run_options(), config.listeners)
        self._tasks: set[asyncio.Task[SagaResult | None]] = set()
        self._leases: dict[str, int] = {}
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
        async with AsyncSession(self.config.engine) as session:
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
        """Claim `saga_id` and run it to its end under the lease; None when it could not
        be claimed (not committed, finished, or another worker has it) or the run was
        stopped (lost lease, unexpected error: the saga is left to a worker)."""
        snapshot = await self._in_transaction(
            partial(
                claims.claim_saga,
                saga_id=saga_id,
                owner=self.owner,
                lease_seconds=self.lease_seconds,
                now=utcnow(),
            )
        )
        if snapshot is None:
            log.debug("sagaz: saga %s not claimable here; a worker has or had it", saga_id)
            return None
        token = snapshot.lease_token
        self._leases[saga_id] = token
        run_task = asyncio.current_task()
        assert run_task is not None
        lost = asyncio.Event()
        keeper = asyncio.create_task(
            self._keep_lease(saga_id, token, run_task, lost), name=f"sagaz:lease:{saga_id}"
        )
        scope = (
            SagaContextManager.scope(snapshot.correlation_id)
            if snapshot.correlation_id
            else contextlib.nullcontext()
        )
        try:
            with scope:
                saga = self.sagas.resolve(snapshot.saga_name)
                return await self._engine.for_config(saga.config).run(
                    saga.definition,
                    {},
                    saga_id=saga_id,
                    fence=Fence(self.owner, token),
                    snapshot=snapshot if snapshot.status is SagaStatus.PENDING else None,
                )
        except LeaseLostError:
            log.warning("sagaz: lost the lease of saga %s; another worker owns it", saga_id)
            return None
        except asyncio.CancelledError:
            await self._release(saga_id, token)
            if lost.is_set():
                log.warning("sagaz: lease of saga %s was taken over; stopped its run", saga_id)
                return None
            raise
        except Exception as error:
            log_failure(log, error, "sagaz: running saga %s failed; released for a worker", saga_id)
            await self._release(saga_id, token)
            return None
        finally:
            self._leases.pop(saga_id, None)
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)

    async def _keep_lease(
        self, saga_id: str, token: int, run_task: asyncio.Task[Any], lost: asyncio.Event
    ) -> None:
        while True:
            await asyncio.sleep(self.lease_seconds / 3)
            try:
                held = await self._in_transaction(
                    partial(
                        claims.renew_leases,
                        owner=self.owner,
                        leases={saga_id: token},
                        lease_seconds=self.lease_seconds,
                        now=utcnow(),
                    )
                )
            except Exception as error:
                log_failure(log, error, "sagaz: renewing the lease of saga %s failed", saga_id)
                continue
            if saga_id in held:
                continue
            try:
                finished = await self._in_transaction(
                    partial(claims.released_by_holder, leases={saga_id: token})
                )
            except Exception as error:
                log_failure(log, error, "sagaz: checking saga %s failed", saga_id)
                continue
            if saga_id not in finished:  # else its own run gave the lease back
                lost.set()
                run_task.cancel()
            return

    async def _release(self, saga_id: str, token: int) -> None:
        try:
            await self._in_transaction(
                partial(claims.release_leases, owner=self.owner, leases={saga_id: token})
            )
        except Exception as error:
            log_failure(
                log, error, "sagaz: could not release saga %s; its lease will expire", saga_id
            )

    async def _in_transaction(self, operation: Callable[[sa.Connection], T]) -> T:
        async with self.config.engine.begin() as connection:
            return await connection.run_sync(operation)

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


# -- the runtime ----------------------------------------------------------------------------

_active_lock = threading.Lock()
_active: list[SagaRuntime] = []


class SagaRuntime:
    """Everything sagaz runs for one application, started and stopped with it.

    `start()` initialises the config (engines and pools) unless it already was -
    then whoever initialised it also closes it - and, when asked, starts an in-process
    `SagaWorker` and `OutboxRelay` (the broker from `config.broker_url`). `stop()` stops
    them (in-flight sagas finish within the grace period or are released for another
    worker), closes the broker, the background runner and the config: nothing started
    here - connection, task or thread - is left behind. Production deployments run
    `sagaz worker` instead of the in-process worker and relay.
    """

    def __init__(
        self,
        config: SagaConfig,
        *,
        run_worker: bool = False,
        run_relay: bool = False,
        worker_options: Mapping[str, Any] | None = None,
        relay_options: Mapping[str, Any] | None = None,
        shutdown_grace_seconds: float = 10.0,
    ) -> None:
        self.config = config
        self.run_worker = run_worker
        self.run_relay = run_relay
        self.worker_options = dict(worker_options or {})
        self.relay_options = dict(relay_options or {})
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.worker: SagaWorker | None = None
        self.relay: OutboxRelay | None = None
        self.broker: Broker | None = None
        self._runner: BackgroundSagaRunner | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._sync_sessions: sessionmaker[Session] | None = None
        self._sync_engine: sa.Engine | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._owns_config = False
        self._started = False

    @property
    def started(self) -> bool:
        return self._started

    async def start(self) -> SagaRuntime:
        """Initialise and start everything (see the class docstring). On failure, what
        was already started is stopped again before the error propagates."""
        if self._started:
            return self
        self._owns_config = not self.config.initialized
        await self.config.initialize()
        self._started = True
        try:
            if self.config.database_url:
                self._sessions = async_sessionmaker(self.config.engine, expire_on_commit=False)
                self._runner = BackgroundSagaRunner(
                    self.config,
                    loop=asyncio.get_running_loop(),
                    shutdown_grace_seconds=self.shutdown_grace_seconds,
                )
            if self.run_worker:
                options: dict[str, Any] = {
                    "store": self.config.store,
                    "lease_seconds": self.config.lease_seconds,
                    "options": self.config.run_options(),
                    "listeners": self.config.listeners,
                    "shutdown_grace_seconds": self.shutdown_grace_seconds,
                    **self.worker_options,
                }
                self.worker = SagaWorker(self.config.engine, **options)
                self._spawn(self.worker.run_until_stopped(), "sagaz:in-process-worker")
            if self.run_relay:
                engine = self.config.engine
                self.broker = broker_from_url(self.config.broker_url)
                self.relay = OutboxRelay(engine, self.broker, **self.relay_options)
                self._spawn(self.relay.run_until_stopped(), "sagaz:in-process-relay")
        except BaseException:
            await self.stop()
            raise
        with _active_lock:
            _active.append(self)
        return self

    def _spawn(self, coroutine: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:  # e.g. a database role without a privilege it needs
            log_failure(
                log,
                error,
                "sagaz: %s stopped with an error; restart the application or run "
                "`sagaz worker` (its traceback is logged at DEBUG)",
                task.get_name(),
            )

    async def stop(self) -> None:
        """Stop and release everything `start` started. Idempotent."""
        if not self._started:
            return
        self._started = False
        with _active_lock:
            if self in _active:
                _active.remove(self)
        for runner in (self.worker, self.relay):
            if runner is not None:
                runner.stop()
        tasks, self._tasks = self._tasks, []
        # The worker, the relay and the background runs wind down at the same time.
        await asyncio.gather(
            self._wait_for(tasks),
            self._runner.close() if self._runner is not None else asyncio.sleep(0),
        )
        if self.broker is not None:
            try:
                await self.broker.close()
            except Exception:
                log.warning("sagaz: closing the broker failed", exc_info=True)
        self.worker = self.relay = self.broker = None
        self._runner = None
        self._sessions = self._sync_sessions = None
        self._sync_engine = None
        if self._owns_config:
            await self.config.close()

    async def _wait_for(self, tasks: list[asyncio.Task[None]]) -> None:
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.shutdown_grace_seconds + 5)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- what adapters hand out -----------------------------------------------------------

    @property
    def runner(self) -> BackgroundSagaRunner:
        """The background runner (needs a `database_url`)."""
        if self._runner is None:
            raise ConfigurationError(self._not_ready("background saga runs"))
        return self._runner

    def session(self) -> AsyncSession:
        """A new `AsyncSession` on the config's engine. `expire_on_commit=False`: objects
        stay readable after the commit that precedes the response."""
        if self._sessions is None:
            raise ConfigurationError(self._not_ready("a database session"))
        return self._sessions()

    def sync_session(self) -> Session:
        """A new sync `Session` on the store's sync engine (same database), for sync
        handlers running in a thread."""
        if self._sessions is None:
            raise ConfigurationError(self._not_ready("a database session"))
        if self._sync_sessions is None:
            self._sync_engine = self.config.store.sync_engine
            self._sync_sessions = sessionmaker(self._sync_engine, expire_on_commit=False)
        return self._sync_sessions()

    def engines(self) -> list[sa.Engine]:
        """The sync engines behind the sessions this runtime hands out."""
        if self._sessions is None:
            return []
        engines = [self.config.engine.sync_engine]
        if self._sync_engine is not None:
            engines.append(self._sync_engine)
        return engines

    def _not_ready(self, what: str) -> str:
        if not self._started:
            return f"{what} needs the sagaz runtime to be started (the application's lifespan)"
        return f"{what} needs SagaConfig.database_url (SAGAZ_DATABASE_URL)"


def find_runtime(
    *, config: SagaConfig | None = None, session: Session | AsyncSession | None = None
) -> SagaRuntime:
    """The started runtime to use for a call that has no request at hand: the one of
    `config`, else the one whose engine `session` is bound to, else the only one running
    in this process. Raises ConfigurationError when none (or, ambiguously, several) is
    running."""
    with _active_lock:
        active = list(_active)
    if config is not None:
        for runtime in active:
            if runtime.config is config:
                return runtime
        raise ConfigurationError(
            "this SagaConfig is not started: is it the one passed to the application's "
            "sagaz lifespan, and is the application running?"
        )
    if session is not None and len(active) > 1:
        bind = sync_session_of(session, "find_runtime").get_bind()
        for runtime in active:
            if bind in runtime.engines():
                return runtime
    if len(active) == 1:
        return active[0]
    if not active:
        raise ConfigurationError(
            "sagaz is not running in this process: start it with the application's lifespan "
            "(e.g. FastAPI(lifespan=create_lifespan(config)))"
        )
    raise ConfigurationError(
        f"{len(active)} sagaz runtimes are running in this process; pass config= to say which"
    )
