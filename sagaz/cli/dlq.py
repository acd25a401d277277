"""`sagaz dlq list|show|requeue|purge`: dead-lettered outbox events."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import click

from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option
from sagaz.cli.output import (
    confirm,
    json_option,
    print_fields,
    print_json,
    print_table,
    when,
    yes_option,
)
from sagaz.outbox.maintenance import (
    DeadEvent,
    count_dead,
    list_dead,
    purge_dead,
    requeue_dead,
)


@click.group()
def dlq() -> None:
    """Dead-lettered outbox events: inspect, re-queue, purge."""


def as_document(dead: DeadEvent) -> dict[str, Any]:
    return dataclasses.asdict(dead)


@dlq.command("list")
@database_url_option
@click.option("--topic", help="Only events of this topic.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--after-seq", type=int, help="Page on: only events after this seq.")
@json_option
def list_command(
    database_url: str | None, topic: str | None, limit: int, after_seq: int | None, as_json: bool
) -> None:
    """List dead-lettered events, oldest first (page with --after-seq)."""
    with existing_database(database_url) as engine:
        events = list_dead(engine, topic=topic, limit=limit, after_seq=after_seq)
    if as_json:
        print_json({"events": [as_document(dead) for dead in events]})
        return
    rows = [
        (dead.id, dead.seq, dead.topic, dead.key or "", dead.attempts, dead.last_error or "")
        for dead in events
    ]
    note = f"more: --after-seq {events[-1].seq}" if len(events) == limit else ""
    columns = ("id", "seq", "topic", "key", "attempts", "last error")
    print_table(f"Dead-lettered events ({len(events)})", columns, rows, note=note)


@dlq.command("show")
@database_url_option
@click.argument("event_id")
@json_option
def show_command(database_url: str | None, event_id: str, as_json: bool) -> None:
    """Show one dead-lettered event: payload, headers, attempts, last error."""
    with existing_database(database_url) as engine:
        try:
            found = list_dead(engine, ids=[event_id], limit=1)
        except ValueError as error:
            raise click.UsageError(str(error)) from error
    if not found:
        raise click.ClickException(f"there is no dead-lettered event {event_id}")
    document = as_document(found[0])
    if as_json:
        print_json(document)
        return
    print_fields(
        f"Dead-lettered event {found[0].id}",
        [(key, when(found[0].created_at) if key == "created_at" else value)
         for key, value in document.items()],
    )  # fmt: skip


def _selection(ids: tuple[str, ...], everything: bool, topic: str | None) -> str:
    if bool(ids) == everything:
        raise click.UsageError("give event ids, or --all, but not both")
    if ids:
        return f"{len(ids)} dead-lettered event(s)"
    return "every dead-lettered event" + (f" of topic {topic!r}" if topic else "")


def _selection_options(function: Any) -> Any:
    function = click.option("--topic", help="Only events of this topic.")(function)
    function = click.option("--all", "everything", is_flag=True, help="Every dead event.")(function)
    function = click.argument("ids", nargs=-1)(function)
    return database_url_option(function)


def _act(
    verb: str,
    action: Callable[..., int],
    database_url: str | None,
    selection: tuple[tuple[str, ...], bool, str | None],
    yes: bool,
) -> int:
    """Confirm (when any event matches), then apply `action` (requeue_dead or
    purge_dead) to the selection."""
    ids, everything, topic = selection
    described = _selection(ids, everything, topic)
    chosen = None if everything else list(ids)
    with existing_database(database_url) as engine:
        with engine.connect() as connection:
            try:  # also checks the ids, before anything is asked or written
                matching = count_dead(connection, chosen, topic=topic)
            except ValueError as error:
                raise click.UsageError(str(error)) from error
        if matching:
            confirm(f"{verb} {matching} dead-lettered event(s) ({described})?", yes)
        return action(engine, chosen, topic=topic)


@dlq.command("requeue")
@_selection_options
@yes_option
def requeue_command(
    database_url: str | None, ids: tuple[str, ...], everything: bool, topic: str | None, yes: bool
) -> None:
    """Re-queue dead-lettered events by id, or --all (optionally of one --topic)."""
    count = _act("Re-queue", requeue_dead, database_url, (ids, everything, topic), yes)
    click.echo(f"re-queued {count} event(s)")


@dlq.command("purge")
@_selection_options
@yes_option
def purge_command(
    database_url: str | None, ids: tuple[str, ...], everything: bool, topic: str | None, yes: bool
) -> None:
    """Delete dead-lettered events for good, by id or --all (optionally of one --topic)."""
    count = _act("Delete for good", purge_dead, database_url, (ids, everything, topic), yes)
    click.echo(f"purged {count} event(s)")
