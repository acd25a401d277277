"""How the inspect-and-repair commands print: rich tables on a terminal, plain aligned
text when the output is piped or redirected (never a value cut short: ids, names and
errors come out whole), JSON with `--json`; and the confirmation destructive commands
ask for."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

F = TypeVar("F", bound=Callable[..., Any])

#: Columns whose values are identifiers: never wrapped on a terminal.
ID_COLUMNS = frozenset({"id", "saga id", "event id", "worker"})


def json_option(function: F) -> F:
    """`--json`: print one JSON document instead of tables."""
    return click.option("--json", "as_json", is_flag=True, help="Print JSON.")(function)


def yes_option(function: F) -> F:
    """`--yes`: do not ask for confirmation."""
    return click.option(
        "--yes", "-y", is_flag=True, help="Do not ask for confirmation (for scripts)."
    )(function)


def confirm(question: str, yes: bool) -> None:
    """Ask `question` unless `yes`; anything but a yes aborts (exit status 1). Without a
    terminal to answer on, only --yes goes ahead."""
    if not yes:
        click.confirm(question, abort=True)


def when(value: datetime | None) -> str:
    """A timestamp to print ("" for none), to the second, in UTC."""
    return "" if value is None else value.isoformat(timespec="seconds")


def seconds(value: float | None) -> str:
    """A duration to print ("" for none)."""
    return "" if value is None else f"{value:.3f}s"


def print_json(document: Any) -> None:
    """`document` as indented JSON; timestamps as ISO 8601."""
    click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _cell(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def print_table(
    title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]], *, note: str = ""
) -> None:
    """A table: rich on a terminal, plain aligned columns otherwise (a title line, a
    header line, one line per row, values whole with inner whitespace collapsed)."""
    cells = [[_cell(value) for value in row] for row in rows]
    console = Console()
    if console.is_terminal:
        table = Table(title=title, caption=note or None)
        for column in columns:
            table.add_column(column, no_wrap=column in ID_COLUMNS, overflow="fold")
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    click.echo(title)
    lines = [list(columns), *cells]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    for line in lines:
        padded = (value.ljust(width) for value, width in zip(line, widths, strict=True))
        click.echo("  ".join(padded).rstrip())
    if note:
        click.echo(note)


def print_fields(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    """Name/value lines under a title (a record's details)."""
    print_table(title, ("field", "value"), [(name, value) for name, value in fields])
