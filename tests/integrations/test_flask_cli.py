"""`flask sagaz ...`: the `sagaz` command's own subcommands, mounted under the app's CLI,
with the database, broker and lease taken from the app's SAGAZ_* config (the database
from its Flask-SQLAlchemy bind) instead of the environment. The worker is run as a
process by tests/examples/test_flask_example.py."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from flask import Flask

from sagaz.integrations.flask import SagazExtension
from sagaz.store import migrations
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import build_app, running

pytestmark = pytest.mark.postgres

WIDE = {"COLUMNS": "200"}  # rich tables: room for whole ids


def test_db_upgrade_migrates_the_apps_database_not_the_environments(
    pg_empty: DatabaseUrls, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SAGAZ_DATABASE_URL", "postgresql+psycopg://nobody@127.0.0.1:1/elsewhere")
    app, extension = build_app(pg_empty.url, create_tables=False)
    with running(app, extension):
        runner = app.test_cli_runner()
        upgraded = runner.invoke(args=["sagaz", "db", "upgrade"])
        assert upgraded.exit_code == 0, upgraded.output
        assert "(head)" in upgraded.output
        current = runner.invoke(args=["sagaz", "db", "current", "--check"])
        assert current.exit_code == 0, current.output
    engine = pg_empty.sync_engine(poolclass=sa.NullPool)
    with engine.connect() as connection:
        assert migrations.current(connection) in migrations.heads()
        tables = set(sa.inspect(connection).get_table_names())
    engine.dispose()
    assert {"sagaz_sagas", "sagaz_outbox"} <= tables


def test_list_shows_the_apps_sagas(app_db: DatabaseUrls) -> None:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        saga_id = app.test_client().post("/orders").get_json()["saga_id"]
        listed = app.test_cli_runner().invoke(args=["sagaz", "list", "--instances"], env=WIDE)
    assert listed.exit_code == 0, listed.output
    assert "integration-order" in listed.output  # registered: no --import needed
    assert saga_id in listed.output


def test_dlq_and_explicit_options_still_work(app_db: DatabaseUrls, pg_empty: DatabaseUrls) -> None:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        runner = app.test_cli_runner()
        dead = runner.invoke(args=["sagaz", "dlq", "list"], env=WIDE)
        assert dead.exit_code == 0, dead.output
        assert "Dead-lettered events (0)" in dead.output
        # --url still overrides the app's database: this schema has no sagaz tables yet
        other = runner.invoke(args=["sagaz", "db", "current", "--url", pg_empty.url])
        assert other.exit_code == 0, other.output
        assert "none" in other.output


def test_help_names_the_apps_settings(app_db: DatabaseUrls) -> None:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        shown = app.test_cli_runner().invoke(args=["sagaz", "worker", "--help"], env=WIDE)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "SQLAlchemy URL of the sagaz tables. [default: (the app's SAGAZ_DATABASE_URL)]" in text
    assert "[default: (the app's SAGAZ_BROKER_URL)]" in text
    assert "[default: (the app's SAGAZ_LEASE_SECONDS)]" in text
    assert "env: SAGAZ_DATABASE_URL" not in text


def test_an_app_without_a_database_says_what_to_set() -> None:
    app = Flask(__name__)
    SagazExtension(app)
    result = app.test_cli_runner().invoke(args=["sagaz", "db", "upgrade"])
    assert result.exit_code == 2
    assert "SAGAZ_DATABASE_URL" in result.output


def test_the_operator_commands_run_on_the_apps_database(app_db: DatabaseUrls) -> None:
    """`flask sagaz show|stats|cancel|retry`: the `sagaz` commands on the app's database."""
    app, extension = build_app(app_db.url)
    with running(app, extension):
        saga_id = app.test_client().post("/orders").get_json()["saga_id"]
        runner = app.test_cli_runner()
        shown = runner.invoke(args=["sagaz", "show", saga_id, "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["id"] == saga_id
        stats = runner.invoke(args=["sagaz", "stats", "--json"])
        assert json.loads(stats.output)["by_status"]
        cancelled = runner.invoke(args=["sagaz", "cancel", saga_id, "--yes"])
        assert cancelled.exit_code == 0, cancelled.output
        refused = runner.invoke(args=["sagaz", "retry", saga_id, "--yes"])
        assert refused.exit_code != 0  # only a FAILED saga is retried
