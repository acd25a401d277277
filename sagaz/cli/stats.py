"""`sagaz stats`: sagaz's health, sagas by status and name, the outbox's backlog, dead
letters and the workers holding leases (`sagaz.operations.stats`)."""

from __future__ import annotations

from typing import Any

import click

from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option
from sagaz.cli.output import json_option, print_fields, print_json, print_table, seconds
from sagaz.operations.health import HealthStatus, HealthThresholds
from sagaz.operations.stats import read_stats
from sagaz.types import SagaStatus

DEFAULTS = HealthThresholds()


THRESHOLDS = (
    ("--max-oldest-pending", float, "Seconds the oldest unpublished event may wait"),
    ("--max-pending", int, "Unpublished events allowed"),
    ("--max-dead", int, "Dead-lettered events allowed"),
)


def _threshold_options(function: Any) -> Any:
    defaults = (
        DEFAULTS.max_oldest_pending_seconds,
        DEFAULTS.max_pending,
        DEFAULTS.max_dead,
    )
    for (flag, kind, what), default in zip(THRESHOLDS, defaults, strict=True):
        help_text = f"{what} before sagaz is degraded."
        option = click.option(flag, type=kind, default=default, show_default=True, help=help_text)
        function = option(function)
    return function


@click.command("stats")
@database_url_option
@_threshold_options
@json_option
def stats(
    database_url: str | None,
    max_oldest_pending: float,
    max_pending: int,
    max_dead: int,
    as_json: bool,
) -> None:
    """Counts an operator watches, and sagaz's health (exit status 1 when failing,
    2 when degraded)."""
    thresholds = HealthThresholds(
        max_pending=max_pending, max_oldest_pending_seconds=max_oldest_pending, max_dead=max_dead
    )
    with existing_database(database_url) as engine, engine.connect() as connection:
        found = read_stats(connection, thresholds=thresholds)
    health = found.health
    if as_json:
        print_json(found.as_dict())
    else:
        outbox = health.outbox
        print_fields(
            f"sagaz: {health.status.value}",
            [
                ("schema revision", health.schema_revision or "none"),
                ("expected revision", health.expected_revision),
                ("outbox pending", "" if outbox is None else outbox.pending),
                ("oldest pending", "" if outbox is None else seconds(outbox.oldest_pending_age)),
                ("dead-lettered", "" if outbox is None else outbox.dead),
                *(("problem", problem) for problem in health.problems),
            ],
        )
        statuses = [status.value for status in SagaStatus]
        rows = [
            (name, *(counts.get(status, 0) for status in statuses))
            for name, counts in found.by_name.items()
        ]
        rows.append(("(all)", *(found.by_status.get(status, 0) for status in statuses)))
        print_table("Sagas by name and status", ("name", *statuses), rows)
        print_table("Workers holding leases", ("worker", "sagas"), found.lease_holders.items())
    if health.status is HealthStatus.FAILING:
        raise SystemExit(1)
    if health.status is HealthStatus.DEGRADED:
        raise SystemExit(2)
