"""`sagaz db upgrade|current|downgrade` through click."""

from __future__ import annotations

import sqlalchemy as sa
from click.testing import CliRunner

from sagaz.cli import main
from sagaz.store.schema import TABLE_NAMES
from tests.conftest import DatabaseUrls


def test_db_commands(db: DatabaseUrls) -> None:
    runner = CliRunner()
    # the fixture created the tables without Alembic: the version table is missing
    engine = db.sync_engine()
    with engine.begin() as connection:
        for table in ("sagaz_saga_steps", "sagaz_sagas", "sagaz_outbox", "sagaz_inbox"):
            connection.execute(sa.text(f"DROP TABLE {table}"))
    result = runner.invoke(main, ["db", "current", "--url", db.url], catch_exceptions=False)
    assert "none" in result.output
    result = runner.invoke(main, ["db", "upgrade", "--url", db.url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert set(sa.inspect(engine).get_table_names()) >= TABLE_NAMES
    result = runner.invoke(main, ["db", "current", "--url", db.url], catch_exceptions=False)
    assert result.output.strip() == "0001_initial"
    result = runner.invoke(main, ["db", "downgrade", "--url", db.url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert not TABLE_NAMES & set(sa.inspect(engine).get_table_names())
    engine.dispose()
