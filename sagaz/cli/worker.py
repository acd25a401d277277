"""`sagaz worker`: the saga runner and the outbox relay, together or separately."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Any

import click

from sagaz.cli.options import database_url_option, import_modules, imports_option
from sagaz.outbox.brokers import broker_from_url
from sagaz.outbox.relay import OutboxRelay
from sagaz.registry import registry
from sagaz.store.engines import create_async_engine
from sagaz.worker import SagaWorker

log = logging.getLogger("sagaz.cli")


@click.command()
@database_url_option
@imports_option
@click.option("--sagas/--no-sagas", "run_sagas", default=True, help="Run the saga worker.")
@click.option("--outbox/--no-outbox", "run_outbox", default=True, help="Run the outbox relay.")
@click.option("--concurrency", default=50, show_default=True, help="Sagas run at once.")
@click.option("--batch-size", default=500, show_default=True, help="Outbox events per batch.")
@click.option(
    "--broker-url",
    envvar="SAGAZ_BROKER_URL",
    default="memory://",
    show_default=True,
    help="Where the relay publishes: memory://, redis://, amqp://, nats://, kafka:// "
    "(env: SAGAZ_BROKER_URL).",
)
@click.option("--lease-seconds", default=30.0, show_default=True, help="Saga lease length.")
@click.option("--poll-interval", default=1.0, show_default=True, help="Fallback poll, seconds.")
@click.option("--max-attempts", default=5, show_default=True, help="Claims before a saga fails.")
@click.option(
    "--shutdown-grace", default=10.0, show_default=True, help="Seconds in-flight work may finish."
)
@click.option("--log-level", default="INFO", show_default=True)
def worker(
    database_url: str,
    imports: tuple[str, ...],
    run_sagas: bool,
    run_outbox: bool,
    concurrency: int,
    batch_size: int,
    broker_url: str,
    lease_seconds: float,
    poll_interval: float,
    max_attempts: int,
    shutdown_grace: float,
    log_level: str,
) -> None:
    """Run sagas started in the database and relay outbox events until SIGTERM/SIGINT.

    On SIGTERM or SIGINT the worker stops claiming; in-flight sagas get --shutdown-grace
    seconds to finish, then are released for another worker; the relay finishes the batch
    it is publishing. Then the process exits 0.
    """
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not run_sagas and not run_outbox:
        raise click.UsageError("nothing to run: --no-sagas and --no-outbox together")
    modules = import_modules(imports)
    if run_sagas and not registry.names():
        raise click.UsageError(
            "no sagas are registered: pass --import with the module(s) that define them"
        )
    log.info("imported %s; sagas: %s", modules or "nothing", ", ".join(registry.names()))
    options: dict[str, Any] = {
        "concurrency": concurrency,
        "batch_size": batch_size,
        "lease_seconds": lease_seconds,
        "poll_interval": poll_interval,
        "max_attempts": max_attempts,
        "shutdown_grace": shutdown_grace,
    }
    asyncio.run(_serve(database_url, broker_url, run_sagas, run_outbox, options))


async def _serve(
    database_url: str,
    broker_url: str,
    run_sagas: bool,
    run_outbox: bool,
    options: dict[str, Any],
) -> None:
    engine = create_async_engine(database_url)
    postgres = engine.dialect.name == "postgresql"
    runners: list[SagaWorker | OutboxRelay] = []
    if run_sagas:
        runners.append(
            SagaWorker(
                engine,
                concurrency=options["concurrency"],
                lease_seconds=options["lease_seconds"],
                poll_interval=options["poll_interval"],
                max_attempts=options["max_attempts"],
                shutdown_grace_seconds=options["shutdown_grace"],
                listen=postgres,
            )
        )
    broker = broker_from_url(broker_url) if run_outbox else None
    if broker is not None:
        runners.append(
            OutboxRelay(
                engine,
                broker,
                batch_size=options["batch_size"],
                poll_interval=options["poll_interval"],
                listen=postgres,
            )
        )
    loop = asyncio.get_running_loop()
    for number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(number, _stop_all, runners)
    log.info("sagaz worker running (%s)", ", ".join(type(r).__name__ for r in runners))
    try:
        await asyncio.gather(*(runner.run_until_stopped() for runner in runners))
    finally:
        for number in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(number)
        if broker is not None:
            await broker.close()
        if run_sagas:
            store = runners[0]
            assert isinstance(store, SagaWorker)
            await store.store.close()
        await engine.dispose()
        log.info("sagaz worker stopped")


def _stop_all(runners: list[SagaWorker | OutboxRelay]) -> None:
    log.info("stopping: no new work; finishing or releasing what is in flight")
    for runner in runners:
        runner.stop()
