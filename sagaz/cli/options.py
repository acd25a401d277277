"""Options and helpers every `sagaz` subcommand shares."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: The embedded default: a SQLite file in the current directory.
DEFAULT_DATABASE_URL = "sqlite:///sagaz.db"


def database_url_option(function: F) -> F:
    """`--url`, defaulting to $SAGAZ_DATABASE_URL, else the embedded SQLite file."""
    return click.option(
        "--url",
        "database_url",
        envvar="SAGAZ_DATABASE_URL",
        default=DEFAULT_DATABASE_URL,
        show_default=True,
        help="SQLAlchemy URL of the sagaz tables (env: SAGAZ_DATABASE_URL).",
    )(function)


def imports_option(function: F) -> F:
    """`--import MODULE` (repeatable): modules whose import registers sagas."""
    return click.option(
        "--import",
        "imports",
        multiple=True,
        envvar="SAGAZ_IMPORTS",
        help="Module to import so its sagas are registered; repeat for several "
        "(env: SAGAZ_IMPORTS, comma-separated).",
    )(function)


def import_modules(names: Iterable[str]) -> list[str]:
    """Import each module (comma-separated lists allowed); a failure is a usage error."""
    imported: list[str] = []
    for entry in names:
        for name in (part.strip() for part in entry.split(",")):
            if not name:
                continue
            try:
                importlib.import_module(name)
            except ImportError as error:
                raise click.BadParameter(
                    f"cannot import {name!r}: {error}", param_hint="--import"
                ) from error
            imported.append(name)
    return imported


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class Duration(click.ParamType):  # type: ignore[type-arg]  # generic from click 8.3
    """A duration: seconds, or a number with a unit - `90`, `30s`, `10m`, `2h`, `7d`."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", str(value))
        if match is None:
            self.fail(f"{value!r} is not a duration (like 90, 30s, 10m, 2h or 7d)", param, ctx)
        return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])
