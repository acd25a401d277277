"""`sagaz show SAGA_ID`: one saga, each of its steps, and its compensation path."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import click
import sqlalchemy as sa

from sagaz.cli.database import existing_database
from sagaz.cli.options import database_url_option, import_modules, imports_option
from sagaz.cli.output import json_option, print_fields, print_json, print_table, seconds, when
from sagaz.errors import CorruptRowError, UnknownSagaError
from sagaz.registry import registry
from sagaz.state import SagaSnapshot
from sagaz.store.operations import (
    SAGA_COLUMNS_AS_TEXT,
    STEP_COLUMNS_AS_TEXT,
    as_utc,
    snapshot_from_row,
    step_from_row,
)
from sagaz.store.schema import saga_steps, sagas
from sagaz.types import SagaStatus, StepOutcome, StepStatus

_UNDO_STATUSES = (StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED)


@dataclass
class SagaDetail:
    """A saga as an operator reads it; rows that cannot be read are shown, not refused."""

    saga: SagaSnapshot
    cancel_requested_at: datetime | None
    problems: list[str] = field(default_factory=list)
    depends_on: dict[str, list[str]] | None = None
    """Step -> its dependencies, when the saga's definition is registered."""

    def order(self) -> list[str]:
        """The steps in definition order when known (with those never started), else in
        the order they started."""
        if self.depends_on is not None:
            return list(self.depends_on)
        far = datetime.max.replace(tzinfo=None)
        return sorted(
            self.saga.steps,
            key=lambda n: ((self.saga.steps[n].started_at or far).replace(tzinfo=None), n),
        )

    def compensation_path(self) -> list[tuple[str, str]]:
        """The steps to undo, in the order compensation takes them (dependents first),
        each with how far its compensation got."""
        status = self.saga.status
        backwards = status in (SagaStatus.COMPENSATING, SagaStatus.COMPENSATED, SagaStatus.FAILED)
        path = []
        for name in reversed(self.order()):
            step = self.saga.steps.get(name)
            if step is None:
                continue
            if step.status in _UNDO_STATUSES:
                path.append((name, step.status.value))
            elif backwards and step.status is StepStatus.COMPLETED:
                done = status is not SagaStatus.COMPENSATING
                path.append((name, "not compensated" if done else "to compensate"))
        return path


def read_detail(connection: sa.Connection, saga_id: str) -> SagaDetail | None:
    row = connection.execute(
        sa.select(*SAGA_COLUMNS_AS_TEXT).where(sagas.c.id == saga_id)
    ).one_or_none()
    if row is None:
        return None
    problems = []
    try:
        saga = snapshot_from_row(row)
    except CorruptRowError as error:
        problems.append(str(error))
        saga = snapshot_from_row(row, strict=False)
    for step_row in connection.execute(
        sa.select(*STEP_COLUMNS_AS_TEXT).where(saga_steps.c.saga_id == saga_id)
    ):
        try:
            saga.steps[step_row.name] = step_from_row(step_row)
        except CorruptRowError as error:
            problems.append(str(error))
    detail = SagaDetail(saga, as_utc(row.cancel_requested_at), problems)
    try:
        definition = registry.resolve(saga.saga_name).definition
    except UnknownSagaError:
        return detail
    detail.depends_on = {step.name: list(step.depends_on) for step in definition.steps}
    return detail


def duration(step: StepOutcome) -> float | None:
    if step.started_at is None or step.finished_at is None:
        return None
    return (step.finished_at - step.started_at).total_seconds()


def as_document(detail: SagaDetail) -> dict[str, Any]:
    saga = detail.saga
    steps = []
    for name in detail.order():
        step = saga.steps.get(name)
        steps.append(
            {
                "name": name,
                "status": "not started" if step is None else step.status.value,
                "attempts": 0 if step is None else step.attempts,
                "started_at": None if step is None else step.started_at,
                "finished_at": None if step is None else step.finished_at,
                "duration_seconds": None if step is None else duration(step),
                "error": None if step is None else step.error,
                "result": None if step is None else step.result,
                "depends_on": None if detail.depends_on is None else detail.depends_on[name],
            }
        )
    return {
        "id": saga.saga_id,
        "name": saga.saga_name,
        "status": saga.status.value,
        "error": saga.error,
        "created_at": saga.created_at,
        "updated_at": saga.updated_at,
        "attempts": saga.attempts,
        "stalled_claims": saga.stalled_claims,
        "lease_owner": saga.lease_owner,
        "lease_expires_at": saga.lease_expires_at,
        "lease_token": saga.lease_token,
        "cancel_requested_at": detail.cancel_requested_at,
        "correlation_id": saga.correlation_id,
        "idempotency_key": saga.idempotency_key,
        "context": saga.context,
        "steps": steps,
        "compensation_path": [
            {"step": name, "status": status} for name, status in detail.compensation_path()
        ],
        "problems": detail.problems,
    }


def saga_id_argument(value: str) -> str:
    """A saga id as given on the command line, checked (a UUID)."""
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a saga id (a UUID)") from None


def load_detail(database_url: str | None, saga_id: str) -> SagaDetail:
    with existing_database(database_url) as engine, engine.connect() as connection:
        detail = read_detail(connection, saga_id_argument(saga_id))
    if detail is None:
        raise click.ClickException(f"there is no saga {saga_id}")
    return detail


@click.command("show")
@database_url_option
@imports_option
@click.argument("saga_id")
@json_option
def show(database_url: str | None, imports: tuple[str, ...], saga_id: str, as_json: bool) -> None:
    """Show one saga: its state, each step (status, attempts, timings, last error) and
    its compensation path. With --import, steps not started yet are listed too."""
    import_modules(imports)
    detail = load_detail(database_url, saga_id)
    document = as_document(detail)
    if as_json:
        print_json(document)
        return
    print_fields(
        f"Saga {detail.saga.saga_id}",
        [
            (key.replace("_", " "), when(value) if isinstance(value, datetime) else value)
            for key, value in document.items()
            if key not in ("id", "context", "steps", "compensation_path", "problems")
        ],
    )
    rows = [
        (
            step["name"],
            step["status"],
            step["attempts"],
            when(step["started_at"]),
            when(step["finished_at"]),
            seconds(step["duration_seconds"]),
            step["error"] or "",
        )
        for step in document["steps"]
    ]
    columns = ("step", "status", "attempts", "started", "finished", "took", "last error")
    print_table("Steps", columns, rows)
    path = detail.compensation_path()
    if path:
        click.echo("Compensation path: " + " -> ".join(f"{n} ({s})" for n, s in path))
    for problem in detail.problems:
        click.echo(f"cannot read: {problem}")
