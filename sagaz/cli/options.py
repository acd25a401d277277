"""Options and helpers every `sagaz` subcommand shares."""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

#: Where a command takes its database URL from, in its messages.
URL_SOURCES = "--url or SAGAZ_DATABASE_URL"


def database_url_option(function: F) -> F:
    """`--url`, defaulting to $SAGAZ_DATABASE_URL; no other default (see `require_url`)."""
    return click.option(
        "--url",
        "database_url",
        envvar="SAGAZ_DATABASE_URL",
        default=None,
        help="SQLAlchemy URL of the sagaz tables (env: SAGAZ_DATABASE_URL; required).",
    )(function)


def require_url(database_url: str | None) -> str:
    """The database URL a command was given; a usage error (exit status 2) when none was.

    No command falls back to a database of its own choosing: a default SQLite file would
    be created, empty, wherever the command happened to run."""
    if not database_url:
        raise click.UsageError(
            f"no database given: pass {URL_SOURCES} (e.g. postgresql://user@host/db "
            "or sqlite:///path/to/file.db)"
        )
    return database_url


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
    """Import each module (comma-separated lists allowed); a failure is a usage error.

    The current directory is put first on the import path (unless already on it), as
    uvicorn, celery and flask do, so `sagaz worker --import shop.sagas` finds `./shop`
    from the installed `sagaz` command as it does from `python -m sagaz`."""
    imported: list[str] = []
    _current_directory_on_path()
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


def _current_directory_on_path() -> None:
    cwd = os.getcwd()
    on_path = {os.path.abspath(entry or os.curdir) for entry in sys.path}
    if cwd not in on_path:
        sys.path.insert(0, cwd)


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
