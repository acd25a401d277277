"""`sagaz list`: registered sagas and recent saga instances."""

from __future__ import annotations

import click
from rich.console import Console
from rich.table import Table

from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option, import_modules, imports_option
from sagaz.registry import registry
from sagaz.store.stores import SagaStore
from sagaz.types import SagaStatus


@click.command("list")
@database_url_option
@imports_option
@click.option(
    "--status",
    type=click.Choice([s.value for s in SagaStatus]),
    help="Show saga instances with this status.",
)
@click.option("--name", help="Show saga instances of this saga.")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 1000))
@click.option("--instances/--no-instances", default=None, help="Also list saga instances.")
def list_sagas(
    database_url: str | None,
    imports: tuple[str, ...],
    status: str | None,
    name: str | None,
    limit: int,
    instances: bool | None,
) -> None:
    """List the registered sagas and, with --instances/--status/--name, recent sagas."""
    import_modules(imports)
    console = Console()
    registered = Table(title="Registered sagas")
    registered.add_column("name")
    registered.add_column("steps")
    for saga_name in registry.names():
        definition = registry.resolve(saga_name).definition
        registered.add_row(saga_name, " -> ".join(step.name for step in definition.steps))
    console.print(registered)
    if not (instances or status or name):
        return
    with existing_database(database_url) as engine:
        sagas = SagaStore(engine).list(status=status, name=name, limit=limit)
    table = Table(title=f"Sagas (newest first, at most {limit})")
    for column in ("id", "name", "status", "updated", "error"):
        table.add_column(column)
    for saga in sagas:
        table.add_row(
            saga.saga_id,
            saga.saga_name,
            saga.status.value,
            saga.updated_at.isoformat(timespec="seconds") if saga.updated_at else "",
            (saga.error or "")[:80],
        )
    console.print(table)
