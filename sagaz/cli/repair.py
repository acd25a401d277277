"""`sagaz retry` and `sagaz cancel`: hand a saga back to the workers, to resume it or to
compensate it. Both only change the saga's row; the work itself is done by a worker,
under a lease, like any other run (`sagaz worker` must be running)."""

from __future__ import annotations

import click

from sagaz._util import utcnow
from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option
from sagaz.cli.output import confirm, yes_option
from sagaz.cli.show import load_detail, saga_id_argument
from sagaz.worker.cancel import CANCELLABLE_STATUSES, request_cancel
from sagaz.worker.repair import Retry, RetryRefused, retry_saga


@click.command("retry")
@database_url_option
@click.argument("saga_id")
@click.option(
    "--compensate/--resume",
    default=None,
    help="Re-run the compensation / resume going forward (default: resume unless a "
    "compensation has begun).",
)
@yes_option
def retry(database_url: str | None, saga_id: str, compensate: bool | None, yes: bool) -> None:
    """Hand a FAILED saga back to the workers once its cause is fixed.

    It resumes after its last completed step (running its failed step again), or, once a
    compensation has begun (or with --compensate), compensates every step not compensated
    yet. A worker picks it up at once."""
    detail = load_detail(database_url, saga_id)
    saga = detail.saga
    confirm(f"Retry saga {saga.saga_id} ({saga.saga_name}, {saga.status.value})?", yes)
    with existing_database(database_url) as engine, engine.begin() as connection:
        try:
            outcome = retry_saga(
                connection, saga_id_argument(saga_id), now=utcnow(), compensate=compensate
            )
        except RetryRefused as error:
            raise click.ClickException(str(error)) from None
    if outcome is Retry.RESUMED:
        click.echo(f"saga {saga.saga_id} is RUNNING again: a worker resumes it")
    else:
        click.echo(f"saga {saga.saga_id} is COMPENSATING: a worker compensates what is left")


@click.command("cancel")
@database_url_option
@click.argument("saga_id")
@yes_option
def cancel(database_url: str | None, saga_id: str, yes: bool) -> None:
    """Cancel a PENDING or RUNNING saga: it is compensated.

    A running saga stops at its next step boundary (a step in flight finishes first, its
    result recorded), then every step whose action succeeded is compensated. A saga that
    finishes before its worker sees the request stays finished."""
    detail = load_detail(database_url, saga_id)
    saga = detail.saga
    if saga.status.value not in CANCELLABLE_STATUSES:
        raise click.ClickException(
            f"saga {saga.saga_id} is {saga.status.value}; only a PENDING or RUNNING saga "
            "can be cancelled"
        )
    confirm(f"Cancel saga {saga.saga_id} ({saga.saga_name}, {saga.status.value})?", yes)
    with existing_database(database_url) as engine, engine.begin() as connection:
        requested = request_cancel(connection, saga.saga_id, now=utcnow())
    if not requested:
        raise click.ClickException(f"saga {saga.saga_id} finished meanwhile; nothing to cancel")
    click.echo(
        f"cancel of saga {saga.saga_id} requested: a worker compensates it (a running "
        "saga stops at its next step boundary)"
    )
