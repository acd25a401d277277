"""`sagaz db upgrade|downgrade|current`: sagaz's own migrations (shipped in the package,
recorded in their own version table, `sagaz_alembic_version`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click
from alembic.util import CommandError

from sagaz._util import scrub_passwords
from sagaz.cli.database import DATABASE_FAILURES, database_error, shown
from sagaz.cli.options import database_url_option, require_url
from sagaz.errors import ConfigurationError
from sagaz.store import migrations

F = TypeVar("F", bound=Callable[..., Any])


def schema_option(function: F) -> F:
    """`--schema`, defaulting to $SAGAZ_DATABASE_SCHEMA (PostgreSQL only)."""
    return click.option(
        "--schema",
        envvar="SAGAZ_DATABASE_SCHEMA",
        default=None,
        help="PostgreSQL schema for sagaz's tables, created if missing "
        "(env: SAGAZ_DATABASE_SCHEMA; default: the connection's search_path).",
    )(function)


@contextmanager
def _reported(url: str) -> Iterator[None]:
    """Known failures (bad URL, unknown revision, the database unreachable or refusing:
    no privilege, a schema it may not create in) as one-line errors, not tracebacks."""
    try:
        yield
    except (ConfigurationError, CommandError) as error:
        raise click.ClickException(scrub_passwords(str(error))) from error
    except DATABASE_FAILURES as error:
        raise database_error(error, url) from error


def _describe(revision: str | None) -> str:
    if revision is None:
        return "none (sagaz's tables are not created)"
    return f"{revision} (head)" if revision in migrations.heads() else revision


@click.group()
def db() -> None:
    """sagaz's tables: create, update or drop them."""


@db.command()
@database_url_option
@schema_option
@click.option("--revision", default="head", show_default=True, help="Revision to reach.")
def upgrade(database_url: str | None, schema: str | None, revision: str) -> None:
    """Create or update sagaz's tables (nothing to do when already at the revision)."""
    database_url = require_url(database_url)
    with _reported(database_url):
        migrations.upgrade(database_url, revision, schema=schema)
        click.echo(f"sagaz tables at {_describe(migrations.current(database_url, schema=schema))}")


@db.command()
@database_url_option
@schema_option
@click.option(
    "--revision",
    default="base",
    show_default=True,
    help="Revision to go back to; base drops sagaz's tables and their rows.",
)
@click.option("--yes", is_flag=True, help="Do not ask before dropping sagaz's tables (base).")
def downgrade(database_url: str | None, schema: str | None, revision: str, yes: bool) -> None:
    """Undo sagaz's migrations down to --revision (asks first when that drops the tables)."""
    database_url = require_url(database_url)
    if revision == "base" and not yes:
        click.confirm(
            f"Drop sagaz's tables and every saga and event in them at {shown(database_url)}?",
            abort=True,
        )
    with _reported(database_url):
        migrations.downgrade(database_url, revision, schema=schema)
        click.echo(f"sagaz tables at {_describe(migrations.current(database_url, schema=schema))}")


@db.command()
@database_url_option
@schema_option
@click.option("--check", is_flag=True, help="Exit with status 1 unless at the head revision.")
def current(database_url: str | None, schema: str | None, check: bool) -> None:
    """Print the revision sagaz's tables are at."""
    database_url = require_url(database_url)
    with _reported(database_url):
        revision = migrations.current(database_url, schema=schema)
    click.echo(_describe(revision))
    if check and revision not in migrations.heads():
        raise SystemExit(1)
