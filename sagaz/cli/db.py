"""`sagaz db upgrade|downgrade|current`: sagaz's own migrations (shipped in the package)."""

from __future__ import annotations

import click

from sagaz.cli.options import database_url_option
from sagaz.store import migrations
from sagaz.store.engines import create_engine


@click.group()
def db() -> None:
    """sagaz's tables: migrate them (own version table: sagaz_alembic_version)."""


@db.command()
@database_url_option
@click.option("--revision", default="head", show_default=True)
def upgrade(database_url: str, revision: str) -> None:
    """Create or update sagaz's tables."""
    migrations.upgrade(database_url, revision)
    click.echo(f"sagaz tables at {revision}")


@db.command()
@database_url_option
@click.option("--revision", default="base", show_default=True)
def downgrade(database_url: str, revision: str) -> None:
    """Undo sagaz's migrations down to --revision (base drops sagaz's tables)."""
    migrations.downgrade(database_url, revision)
    click.echo(f"sagaz tables at {revision}")


@db.command()
@database_url_option
def current(database_url: str) -> None:
    """Print the revision sagaz's tables are at."""
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            click.echo(migrations.current(connection) or "none (sagaz's tables are not created)")
    finally:
        engine.dispose()
