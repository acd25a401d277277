"""Reaching sagaz's database from a command: what goes wrong becomes one line, not a
traceback - a URL that cannot be used, a SQLite file that does not exist, tables that were
never created (`sagaz db upgrade`), a database that does not answer, a role without the
privilege (see sagaz.store.failures). Neither the URL's password nor statement parameters
appear in it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click
import sqlalchemy as sa

from sagaz._util import redact_database_url
from sagaz.cli.options import require_url
from sagaz.errors import ConfigurationError
from sagaz.store.engines import create_engine
from sagaz.store.failures import describe_failure
from sagaz.store.urls import missing_sqlite_file, sync_url

#: SQLSTATE of PostgreSQL's "relation does not exist".
UNDEFINED_TABLE = "42P01"


def shown(url: str | sa.URL) -> str:
    """The URL fit for a message: its password hidden."""
    return redact_database_url(url)


def parse_url(url: str, *, origin: str = "--url") -> sa.URL:
    """The URL parsed, with a backend sagaz supports; else a usage error naming `origin`."""
    try:
        sa.make_url(url)
    except Exception:
        given = "" if "@" in url else f", got {url!r}"  # never echo a password
        raise click.UsageError(
            f"{origin} is not a valid SQLAlchemy URL "
            f"(dialect+driver://user:password@host/database){given}"
        ) from None
    try:
        return sync_url(url)
    except ConfigurationError as error:
        raise click.UsageError(f"{origin}: {error}") from None


def no_database(path: Path) -> click.ClickException:
    return click.ClickException(
        f"there is no database at {path}: create sagaz's tables there with "
        f"`sagaz db upgrade --url sqlite:///{path}`, or point --url (SAGAZ_DATABASE_URL) "
        "at your database"
    )


def is_missing_table(error: BaseException) -> bool:
    """Whether the database refused a statement because a table does not exist."""
    original = getattr(error, "orig", error)
    if getattr(original, "sqlstate", None) == UNDEFINED_TABLE:
        return True
    return "no such table" in str(original)


#: What a command catches as a failure of the database (connecting or a statement).
DATABASE_FAILURES = (sa.exc.SQLAlchemyError, OSError)


def database_error(error: BaseException, url: str | sa.URL) -> click.ClickException:
    """A one-line error for a database failure (see `describe_failure`): missing tables
    say how to create them."""
    if is_missing_table(error):
        return click.ClickException(
            f"sagaz's tables do not exist in {shown(url)}: run `sagaz db upgrade` "
            "with the same --url first"
        )
    return click.ClickException(f"database error at {shown(url)}: {describe_failure(error)}")


@contextmanager
def existing_database(url: str | None) -> Iterator[sa.Engine]:
    """A sync engine on `url` for a command that needs sagaz's tables to exist.

    No URL is a usage error (`require_url`). Never creates a SQLite file: a URL naming one
    that does not exist is an error. Database
    errors inside the block become one-line click errors. The engine is disposed after.
    """
    url = require_url(url)
    parsed = parse_url(url)
    path = missing_sqlite_file(parsed)
    if path is not None:
        raise no_database(path)
    try:
        engine = create_engine(url)
    except (ImportError, sa.exc.ArgumentError) as error:
        raise click.UsageError(f"--url: cannot use {shown(url)}: {error}") from None
    try:
        yield engine
    except DATABASE_FAILURES as error:
        raise database_error(error, url) from error
    finally:
        engine.dispose()
