"""`sagaz worker`: the saga runner and the outbox relay, together or separately.

Its settings are a `SagaConfig`: `SagaConfig.from_env()` (every `SAGAZ_*` variable, see
docs/configuration.md), with `--url`, `--broker-url` and `--lease-seconds` overriding
their variables. A host that has a config of its own (a framework integration) can put it
in `ctx.meta[CONFIG_META_KEY]` before the command runs; it then replaces
`SagaConfig.from_env()`, and the options still override it.

It runs a `sagaz.runtime.SagaRuntime` - the one every framework integration starts -
with its worker polling and its relay running. Everything is checked and built before any
I/O, so a bad option, variable or URL is a one-line error (exit status 2), never a
traceback. Once running, database
failures are logged on one line each and retried, except those retrying cannot fix (no
privilege, no table: `sagaz.store.failures`), which stop it with a one-line error (exit
status 1).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import click
import sqlalchemy as sa
from click.core import ParameterSource
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz._util import freeze_startup_heap
from sagaz.cli.database import (
    DATABASE_FAILURES,
    database_error,
    is_missing_table,
    no_database,
    parse_url,
    shown,
)
from sagaz.cli.observe import metrics_server, observe_options, setup_logging
from sagaz.cli.options import import_modules, imports_option, require_url
from sagaz.config import SagaConfig
from sagaz.engine.threads import in_flight as step_threads_in_flight
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers import Broker, broker_from_url
from sagaz.registry import registry
from sagaz.runtime import SagaRuntime
from sagaz.store.failures import describe_failure, is_fatal
from sagaz.store.schema import outbox, sagas
from sagaz.store.urls import missing_sqlite_file
from sagaz.worker.give_up import DEFAULT_MAX_ATTEMPTS

log = logging.getLogger("sagaz.cli")

#: `ctx.meta` key under which a host may provide the SagaConfig to start from.
CONFIG_META_KEY = "sagaz.saga_config"

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POSITIVE_SECONDS = click.FloatRange(min=0, min_open=True)

#: SagaConfig field -> (its option, its environment variable).
_CONFIG_OPTIONS = {
    "database_url": ("--url", "SAGAZ_DATABASE_URL"),
    "broker_url": ("--broker-url", "SAGAZ_BROKER_URL"),
    "lease_seconds": ("--lease-seconds", "SAGAZ_LEASE_SECONDS"),
}
_RETENTION_OFF = frozenset({"off", "none", "never"})

if TYPE_CHECKING:  # click's ParamType is generic in recent versions only
    _ParamType = click.ParamType[timedelta | None, Any]
else:
    _ParamType = click.ParamType


class RetentionHours(_ParamType):
    """Hours (> 0) as a timedelta, or `off` (None: keep the rows)."""

    name = "HOURS|off"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta | None:
        if value is None or isinstance(value, timedelta):
            return value
        if str(value).strip().lower() in _RETENTION_OFF:
            return None
        try:
            hours = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is neither a number of hours nor 'off'", param, ctx)
        if not hours > 0 or hours == float("inf"):
            self.fail(f"{value!r} must be > 0 hours (or 'off' to keep the rows)", param, ctx)
        return timedelta(hours=hours)


@dataclass(frozen=True)
class WorkerOptions:
    """What the options of `sagaz worker` that are not SagaConfig settings decide."""

    run_sagas: bool
    run_outbox: bool
    concurrency: int
    batch_size: int
    poll_interval: float
    max_attempts: int
    shutdown_grace: float
    relay_lease_seconds: float
    published_retention: timedelta | None
    inbox_retention: timedelta | None
    retention_interval: float


@click.command()
@click.option(
    "--url",
    "database_url",
    default=None,
    show_default="SAGAZ_DATABASE_URL",
    help="SQLAlchemy URL of the sagaz tables (env: SAGAZ_DATABASE_URL; required).",
)
@imports_option
@click.option("--sagas/--no-sagas", "run_sagas", default=True, help="Run the saga worker.")
@click.option("--outbox/--no-outbox", "run_outbox", default=True, help="Run the outbox relay.")
@click.option(
    "--concurrency",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="Sagas run at once.",
)
@click.option(
    "--batch-size",
    default=500,
    show_default=True,
    type=click.IntRange(min=1),
    help="Outbox events per batch.",
)
@click.option(
    "--broker-url",
    default=None,
    show_default="SAGAZ_BROKER_URL, else memory://",
    help="Where the relay publishes: memory://, redis://, amqp://, nats://, kafka:// "
    "(env: SAGAZ_BROKER_URL).",
)
@click.option(
    "--lease-seconds",
    default=None,
    type=float,  # > 0, checked by SagaConfig (a range would show in help after the default)
    show_default="SAGAZ_LEASE_SECONDS, else 30",
    help="Saga lease length (env: SAGAZ_LEASE_SECONDS).",
)
@click.option(
    "--relay-lease-seconds",
    envvar="SAGAZ_RELAY_LEASE_SECONDS",
    default=5.0,
    show_default=True,
    type=POSITIVE_SECONDS,
    help="The relay's claim on a batch of events: renewed while it publishes, so events "
    "of a relay that died are published again within this time "
    "(env: SAGAZ_RELAY_LEASE_SECONDS).",
)
@click.option(
    "--poll-interval",
    default=1.0,
    show_default=True,
    type=POSITIVE_SECONDS,
    help="Fallback poll, seconds.",
)
@click.option(
    "--max-attempts",
    default=DEFAULT_MAX_ATTEMPTS,
    show_default=True,
    type=click.IntRange(min=1),
    help="Claims in a row without progress before a saga is given up (compensated).",
)
@click.option(
    "--shutdown-grace",
    default=10.0,
    show_default=True,
    type=POSITIVE_SECONDS,
    help="Seconds in-flight work may finish.",
)
@click.option(
    "--published-retention-hours",
    "published_retention",
    envvar="SAGAZ_PUBLISHED_RETENTION_HOURS",
    default="168",
    show_default=True,
    type=RetentionHours(),
    help="The relay deletes published outbox events older than this; off keeps them "
    "(env: SAGAZ_PUBLISHED_RETENTION_HOURS).",
)
@click.option(
    "--inbox-retention-hours",
    "inbox_retention",
    envvar="SAGAZ_INBOX_RETENTION_HOURS",
    default="168",
    show_default=True,
    type=RetentionHours(),
    help="The relay deletes consumer inbox rows older than this; off keeps them "
    "(env: SAGAZ_INBOX_RETENTION_HOURS).",
)
@click.option(
    "--retention-interval",
    envvar="SAGAZ_RETENTION_INTERVAL_SECONDS",
    default=300.0,
    show_default=True,
    type=POSITIVE_SECONDS,
    help="Seconds between two retention runs (env: SAGAZ_RETENTION_INTERVAL_SECONDS).",
)
@click.option(
    "--log-level",
    default="INFO",
    show_default=True,
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
)
@observe_options
@click.pass_context
def worker(
    ctx: click.Context,
    database_url: str | None,
    imports: tuple[str, ...],
    run_sagas: bool,
    run_outbox: bool,
    concurrency: int,
    batch_size: int,
    broker_url: str | None,
    lease_seconds: float | None,
    relay_lease_seconds: float,
    poll_interval: float,
    max_attempts: int,
    shutdown_grace: float,
    published_retention: timedelta | None,
    inbox_retention: timedelta | None,
    retention_interval: float,
    log_level: str,
    log_format: str,
    metrics_port: int | None,
) -> None:
    """Run sagas started in the database and relay outbox events until SIGTERM/SIGINT.

    Step and saga defaults (retries, timeouts, failure strategy, compensation retries)
    and the observability switches come from the SAGAZ_* variables of SagaConfig.

    On SIGTERM or SIGINT the worker stops claiming; in-flight sagas get --shutdown-grace
    seconds to finish, then are released for another worker; the relay finishes the batch
    it is publishing. Then the process exits 0.
    """
    setup_logging(log_level, log_format)
    if not run_sagas and not run_outbox:
        raise click.UsageError("nothing to run: --no-sagas and --no-outbox together")
    config = worker_config(
        ctx, database_url=database_url, broker_url=broker_url, lease_seconds=lease_seconds
    )
    require_url(config.database_url)  # before importing the application's modules
    if metrics_port is not None:
        config = dataclasses.replace(config, metrics=True)
    options = WorkerOptions(
        run_sagas=run_sagas,
        run_outbox=run_outbox,
        concurrency=concurrency,
        batch_size=batch_size,
        poll_interval=poll_interval,
        max_attempts=max_attempts,
        shutdown_grace=shutdown_grace,
        relay_lease_seconds=relay_lease_seconds,
        published_retention=published_retention,
        inbox_retention=inbox_retention,
        retention_interval=retention_interval,
    )
    modules = import_modules(imports)
    if run_sagas and not registry.names():
        raise click.UsageError(
            "no sagas are registered: pass --import with the module(s) that define them"
        )
    log.info("imported %s; sagas: %s", modules or "nothing", ", ".join(registry.names()))
    runtime = build_runtime(ctx, config, options)
    try:
        with metrics_server(metrics_port):
            asyncio.run(serve(runtime, _origin(ctx, "database_url")))
    except DATABASE_FAILURES as error:  # one that retrying cannot fix (is_fatal)
        raise database_error(error, runtime.config.database_url or "") from error
    _leave_blocked_steps()


def _leave_blocked_steps() -> None:
    """Exit now if plain `def` steps still run in threads after the shutdown grace: a
    thread cannot be interrupted, and waiting for it (what the interpreter does at exit)
    could take for ever. Their runs were stopped and their leases given back or left to
    expire: another worker resumes those sagas."""
    blocked = step_threads_in_flight()
    if not blocked:
        return
    log.warning(
        "%d step(s) still running in threads after the shutdown grace; exiting without "
        "waiting for them (their sagas are resumed by another worker)",
        blocked,
    )
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def worker_config(ctx: click.Context, **given: Any) -> SagaConfig:
    """The worker's SagaConfig: the host's (CONFIG_META_KEY) or `SagaConfig.from_env()`,
    with the options given (not None) overriding it. Invalid settings are usage errors
    naming the option or variable they came from."""
    overrides = {name: value for name, value in given.items() if value is not None}
    base = ctx.meta.get(CONFIG_META_KEY)
    try:
        if isinstance(base, SagaConfig):
            return dataclasses.replace(base, **overrides)
        return SagaConfig.from_env(**overrides)
    except ConfigurationError as error:
        message = str(error)
        for name in overrides:
            message = message.replace(f"SagaConfig.{name}", _origin(ctx, name), 1)
        raise click.UsageError(message) from None


def build_runtime(ctx: click.Context, config: SagaConfig, options: WorkerOptions) -> SagaRuntime:
    """The `SagaRuntime` that runs the worker and the relay, its settings checked (and
    the broker built) without I/O; failures are click errors."""
    try:
        config.build_listeners()
    except ImportError as error:  # MissingExtraError: SAGAZ_METRICS / SAGAZ_TRACING
        raise click.UsageError(str(error)) from None
    broker: Broker | None = None
    if options.run_outbox:
        try:
            broker = broker_from_url(config.broker_url)
        except (ConfigurationError, ImportError) as error:
            raise click.UsageError(f"{_origin(ctx, 'broker_url')}: {error}") from None
    database_url = require_url(config.database_url)
    url = parse_url(database_url, origin=_origin(ctx, "database_url"))
    path = missing_sqlite_file(url)
    if path is not None:
        raise no_database(path)
    postgres = url.get_backend_name() == "postgresql"
    return SagaRuntime(
        dataclasses.replace(config, database_url=database_url),
        run_worker=options.run_sagas,
        run_relay=options.run_outbox,
        worker_options={
            "concurrency": options.concurrency,
            "poll_interval": options.poll_interval,
            "max_attempts": options.max_attempts,
            "listen": postgres,
        },
        relay_options={
            "batch_size": options.batch_size,
            "claim_seconds": options.relay_lease_seconds,
            "poll_interval": options.poll_interval,
            "listen": postgres,
            "published_retention": options.published_retention,
            "inbox_retention": options.inbox_retention,
            "retention_interval": options.retention_interval,
        },
        shutdown_grace_seconds=options.shutdown_grace,
        broker=broker,
    )


def _origin(ctx: click.Context, name: str) -> str:
    """Where a SagaConfig setting of the worker came from: its option or its variable."""
    option, variable = _CONFIG_OPTIONS[name]
    source = ctx.get_parameter_source(name)
    return option if source is ParameterSource.COMMANDLINE else variable


async def serve(runtime: SagaRuntime, url_origin: str) -> None:
    """Check the tables, then run `runtime` until SIGTERM/SIGINT (or a failure retrying
    cannot fix, raised); close everything either way."""
    loop = asyncio.get_running_loop()
    config = runtime.config
    try:
        await runtime.build()
    except (ConfigurationError, ImportError, sa.exc.ArgumentError) as error:  # the engine
        shown_url = shown(config.database_url or "")
        raise click.UsageError(f"{url_origin}: cannot use {shown_url}: {error}") from None
    except ValueError as error:  # an option the worker or the relay refuses
        raise click.UsageError(str(error)) from None
    try:
        await _check_tables(config.engine, runtime)
        freeze_startup_heap()  # its start-up objects stay: later collections skip them
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(number, _stop, runtime)
        running = [r for r in (runtime.worker if runtime.run_worker else None, runtime.relay) if r]
        log.info("sagaz worker running (%s)", ", ".join(type(r).__name__ for r in running))
        try:
            await runtime.serve()
        finally:
            for number in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(number)
    finally:
        await runtime.stop()
        log.info("sagaz worker stopped")


async def _check_tables(engine: AsyncEngine, runtime: SagaRuntime) -> None:
    """Refuse to start on a database without sagaz's tables, or that refuses this role
    (any failure retrying cannot fix, see sagaz.store.failures). A database that does not
    answer yet is only logged, on one line: the runners retry until it does."""
    tables = [sagas] if runtime.run_worker else []
    if runtime.run_relay:
        tables.append(outbox)
    try:
        async with engine.connect() as connection:
            for table in tables:
                await connection.execute(sa.select(sa.literal(1)).select_from(table).limit(0))
    except DATABASE_FAILURES as error:
        if is_missing_table(error) or is_fatal(error):
            raise database_error(error, engine.url) from None
        log.warning(
            "database at %s: %s; starting anyway, retrying until it answers",
            shown(engine.url),
            describe_failure(error),
        )


def _stop(runtime: SagaRuntime) -> None:
    log.info("stopping: no new work; finishing or releasing what is in flight")
    runtime.request_stop()
