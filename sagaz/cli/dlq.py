"""`sagaz dlq list|requeue`: dead-lettered outbox events."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option
from sagaz.outbox.maintenance import list_dead, requeue_dead


@click.group()
def dlq() -> None:
    """Dead-lettered outbox events: inspect and re-queue."""


@dlq.command("list")
@database_url_option
@click.option("--topic", help="Only events of this topic.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
def list_command(database_url: str | None, topic: str | None, limit: int) -> None:
    """List dead-lettered events, oldest first."""
    with existing_database(database_url) as engine:
        events = list_dead(engine, topic=topic, limit=limit)
    table = Table(title=f"Dead-lettered events ({len(events)})")
    for column in ("id", "topic", "key", "attempts", "last error"):
        table.add_column(column)
    for dead in events:
        table.add_row(
            dead.id, dead.topic, dead.key or "", str(dead.attempts), (dead.last_error or "")[:80]
        )
    Console().print(table)


@dlq.command("requeue")
@database_url_option
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Re-queue every dead event.")
@click.option("--topic", help="Only events of this topic.")
def requeue_command(
    database_url: str | None, ids: tuple[str, ...], everything: bool, topic: str | None
) -> None:
    """Re-queue dead-lettered events by id, or --all (optionally of one --topic)."""
    if bool(ids) == everything:
        raise click.UsageError("give event ids, or --all, but not both")
    with existing_database(database_url) as engine:
        try:
            count = requeue_dead(engine, None if everything else list(ids), topic=topic)
        except ValueError as error:
            raise click.UsageError(str(error)) from error
    click.echo(f"re-queued {count} event(s)")
