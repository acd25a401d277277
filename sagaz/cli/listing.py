"""`sagaz list`: registered sagas and saga instances, filtered and paged."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import click

from sagaz.cli.database import existing_database
from sagaz.cli.options import Duration, database_url_option, import_modules, imports_option
from sagaz.cli.output import json_option, print_json, print_table, when
from sagaz.journal import SagaSnapshot, utcnow
from sagaz.registry import registry
from sagaz.store.operations import list_sagas as read_sagas
from sagaz.types import SagaStatus


def saga_summary(saga: SagaSnapshot) -> dict[str, Any]:
    """A saga's row as `list --json` prints it."""
    return {
        "id": saga.saga_id,
        "name": saga.saga_name,
        "status": saga.status.value,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "attempts": saga.attempts,
        "lease_owner": saga.lease_owner,
        "error": saga.error,
    }


def registered_sagas() -> dict[str, list[str]]:
    """Registered saga name -> its steps, in definition order."""
    return {
        name: [step.name for step in registry.resolve(name).definition.steps]
        for name in registry.names()
    }


@click.command("list")
@database_url_option
@imports_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in SagaStatus]),
    help="Show saga instances with this status.",
)
@click.option("--name", help="Show saga instances of this saga.")
@click.option(
    "--older-than", type=Duration(), help="Only sagas created longer ago than this (e.g. 10m)."
)
@click.option(
    "--newer-than", type=Duration(), help="Only sagas created more recently than this (e.g. 2h)."
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option(
    "--offset", default=0, show_default=True, type=click.IntRange(0), help="Skip this many."
)
@click.option("--instances/--no-instances", default=None, help="Also list saga instances.")
@json_option
def list_sagas(
    database_url: str | None,
    imports: tuple[str, ...],
    status: str | None,
    name: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    offset: int,
    instances: bool | None,
    as_json: bool,
) -> None:
    """List the registered sagas and, with --instances or a filter, saga instances
    (newest first; page with --limit and --offset). Ids are printed whole."""
    import_modules(imports)
    registered = registered_sagas()
    wanted = instances or status or name or older_than or newer_than or as_json
    if not as_json:
        names = [(saga_name, " -> ".join(steps)) for saga_name, steps in registered.items()]
        print_table("Registered sagas", ("name", "steps"), names)
    if not wanted:
        return
    now = utcnow()
    with existing_database(database_url) as engine, engine.connect() as connection:
        sagas = read_sagas(
            connection,
            status=status,
            name=name,
            limit=limit,
            offset=offset,
            created_before=None if older_than is None else now - older_than,
            created_after=None if newer_than is None else now - newer_than,
        )
    next_offset = offset + limit if len(sagas) == limit else None
    if as_json:
        print_json(
            {
                "registered": registered,
                "sagas": [saga_summary(saga) for saga in sagas],
                "offset": offset,
                "limit": limit,
                "next_offset": next_offset,
            }
        )
        return
    rows = [
        (saga.saga_id, saga.saga_name, saga.status.value, when(saga.updated_at), saga.error or "")
        for saga in sagas
    ]
    note = "" if next_offset is None else f"more: --offset {next_offset}"
    title = f"Sagas (newest first, {offset + 1}-{offset + len(sagas)})" if sagas else "Sagas (none)"
    print_table(title, ("id", "name", "status", "updated", "error"), rows, note=note)
