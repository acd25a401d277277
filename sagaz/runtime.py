"""The sagaz runtime: everything sagaz runs for one application, built from a `SagaConfig`
and started and stopped with it - the config's engine and store, a `SagaWorker` (which
also runs the application's in-process and background runs, under its leases), when
asked its polling loop and an `OutboxRelay`, and the `BackgroundSagaRunner`.

The FastAPI lifespan, the Flask extension and Django's runner start one; `find_runtime`
finds the running one for a call that has no request at hand.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, sessionmaker

from sagaz.background import BackgroundSagaRunner
from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.metrics import NO_METRICS, SagazMetrics, metrics_for
from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.brokers.base import Broker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.failures import log_failure
from sagaz.store.unit_of_work import sync_session_of
from sagaz.worker import SagaWorker

__all__ = ["SagaRuntime", "find_runtime", "saga_worker_for"]

log = logging.getLogger("sagaz.integrations")


def saga_worker_for(config: SagaConfig, **options: Any) -> SagaWorker:
    """The `SagaWorker` of an initialised `config`: on its engine and store, with its
    `lease_seconds`, run options and listeners; `options` (SagaWorker's keyword
    arguments) override those. Performs no I/O; raises ValueError for a bad option."""
    settings: dict[str, Any] = {
        "store": config.store,
        "lease_seconds": config.lease_seconds,
        "options": config.run_options(),
        "listeners": config.listeners,
        **options,
    }
    return SagaWorker(config.engine, **settings)


# -- the runtime ----------------------------------------------------------------------------

_active_lock = threading.Lock()
_active: list[SagaRuntime] = []


class SagaRuntime:
    """Everything sagaz runs for one application, started and stopped with it.

    `start()` initialises the config (engines and pools) unless it already was -
    then whoever initialised it also closes it - and, with a `database_url`, builds the
    runtime's `SagaWorker` (`saga_worker_for`): the one that runs this application's
    background runs (`runner`) under its leases. When asked, it also starts that
    worker's polling loop and an `OutboxRelay` (the broker from `config.broker_url`). `stop()` stops
    them (in-flight sagas finish within the grace period or are released for another
    worker), closes the broker, the background runner and the config: nothing started
    here - connection, task or thread - is left behind. Production deployments run
    `sagaz worker` instead of the in-process worker and relay.

    With metrics on - `config.metrics` (the default registry's) or `metrics` given - the
    worker and the relay report to them and their outbox gauges read this runtime's
    database (`sagaz.metrics`).
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
        broker: Broker | None = None,
        metrics: SagazMetrics | None = None,
    ) -> None:
        self.config = config
        self.run_worker = run_worker
        self.run_relay = run_relay
        self.worker_options = dict(worker_options or {})
        self.relay_options = dict(relay_options or {})
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.worker: SagaWorker | None = None
        self.relay: OutboxRelay | None = None
        #: The relay's broker: given, or built from `config.broker_url`; closed by `stop`.
        self.broker: Broker | None = broker
        self._runner: BackgroundSagaRunner | None = None
        #: Given, else the default registry's when `config.metrics` (sagaz.metrics).
        self.metrics = metrics
        self._watched: sa.Engine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._sync_sessions: sessionmaker[Session] | None = None
        self._sync_engine: sa.Engine | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._owns_config = False
        self._built = False
        self._started = False
        self._serving = False

    @property
    def started(self) -> bool:
        return self._started

    async def build(self) -> SagaRuntime:
        """Initialise the config and build the worker, the background runner and, when
        asked, the relay and its broker - without I/O and without starting anything
        (`start` does both; `stop` undoes either). Raises what building them raises
        (ConfigurationError, MissingExtraError, ValueError), after undoing it."""
        if self._built:
            return self
        self._owns_config = not self.config.initialized
        await self.config.initialize()
        self._built = True
        try:
            metrics = self._metrics()
            if self.config.database_url or self.run_worker:
                self.worker = saga_worker_for(
                    self.config,
                    shutdown_grace_seconds=self.shutdown_grace_seconds,
                    **metrics,
                    **self.worker_options,
                )
                self._sessions = async_sessionmaker(self.config.engine, expire_on_commit=False)
                self._runner = BackgroundSagaRunner(
                    self.worker,
                    loop=asyncio.get_running_loop(),
                    shutdown_grace_seconds=self.shutdown_grace_seconds,
                )
            if self.run_relay:
                if self.broker is None:
                    self.broker = broker_from_url(self.config.broker_url)
                self.relay = OutboxRelay(
                    self.config.engine,
                    self.broker,
                    metrics=metrics.get("metrics", NO_METRICS),
                    **self.relay_options,
                )
        except BaseException:
            await self.stop()
            raise
        return self

    def _metrics(self) -> dict[str, Any]:
        """The worker's and the relay's `metrics=` (none when metrics are off), with the
        outbox gauges watching this runtime's database. A `metrics` given to the runtime
        is also fed the transitions: the worker gets it as a listener."""
        given = self.metrics
        if given is None and self.config.metrics:
            self.metrics = metrics_for()
        if self.metrics is None:
            return {}
        if self.config.database_url:
            self._watched = self.config.store.sync_engine
            self.metrics.outbox.watch(self._watched)
        fed = any(getattr(listener, "metrics", None) is given for listener in self.config.listeners)
        if given is not None and not fed and "listeners" not in self.worker_options:
            return {
                "metrics": given,
                "listeners": (*self.config.listeners, given.observe_transition),
            }
        return {"metrics": self.metrics}

    async def start(self) -> SagaRuntime:
        """Build (see `build`) and start everything (see the class docstring). On
        failure, what was already started is stopped again before the error propagates."""
        if self._started:
            return self
        await self.build()
        self._started = True
        if self.run_worker and self.worker is not None:
            self._spawn(self.worker.run_until_stopped(), "sagaz:in-process-worker")
        if self.relay is not None:
            self._spawn(self.relay.run_until_stopped(), "sagaz:in-process-relay")
        with _active_lock:
            _active.append(self)
        return self

    async def serve(self) -> None:
        """Start, then run until `request_stop()` (e.g. on SIGTERM), then `stop()`. When
        the worker or the relay stops on a failure retrying cannot fix, the other is
        stopped too and, once everything is stopped, that failure is raised (instead of
        being logged). For a process that runs nothing else: `sagaz worker`."""
        self._serving = True
        try:
            await self.start()
            outcomes = await asyncio.gather(
                *(self._stop_all_if_failed(task) for task in self._tasks),
                return_exceptions=True,
            )
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
        finally:
            await self.stop()

    async def _stop_all_if_failed(self, task: asyncio.Task[None]) -> None:
        try:
            await task
        except BaseException:
            self.request_stop()
            raise

    def request_stop(self) -> None:
        """Ask the worker and the relay to stop (no new work; in-flight sagas finish or
        are released). Call it on the runtime's loop, e.g. from a signal handler."""
        for runner in (self.worker, self.relay):
            if runner is not None:
                runner.stop()

    def _spawn(self, coroutine: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(self._ended)
        self._tasks.append(task)

    def _ended(self, task: asyncio.Task[None]) -> None:
        error = None if task.cancelled() else task.exception()
        if (
            error is not None and not self._serving
        ):  # `serve` raises it instead  # e.g. a database role without a privilege it needs
            log_failure(
                log,
                error,
                "sagaz: %s stopped with an error; restart the application or run "
                "`sagaz worker` (its traceback is logged at DEBUG)",
                task.get_name(),
            )

    async def stop(self) -> None:
        """Stop and release everything `build` and `start` started. Idempotent."""
        if not self._built:
            return
        self._built = self._started = False
        with _active_lock:
            if self in _active:
                _active.remove(self)
        self.request_stop()
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
        if self.metrics is not None and self._watched is not None:
            self.metrics.outbox.unwatch(self._watched)
            self._watched = None
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
