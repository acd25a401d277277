"""`sagaz db upgrade` and `sagaz worker` against a database that does not answer, a
schema they may not create in, or a role without the privilege (to claim sagas, or to
write a run's steps): one line naming the cause, a non-zero exit status, no traceback,
no password (run as real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from sagaz import start_saga
from tests.cli.sagas_for_cli import FlakySaga
from tests.conftest import DatabaseUrls
from tests.roles import PASSWORD, SELECT_ONLY, limited_role
from tests.store.test_failures import closed_port
from tests.worker.test_failure_logs import ALL_BUT_STEP_WRITES

ROOT = Path(__file__).resolve().parents[2]
SAGAS = "tests.cli.sagas_for_cli"


def sagaz(*args: str, cwd: Path) -> tuple[int, str]:
    """Run `python -m sagaz *args`; its exit status and everything it printed."""
    environment = {
        name: value for name, value in os.environ.items() if not name.startswith("SAGAZ_")
    }
    environment["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-m", "sagaz", *args],
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,  # a safety net: every case here ends on its own within seconds
    )
    return done.returncode, done.stdout


def assert_one_line_failure(status: int, output: str, *fragments: str) -> str:
    """Exit status 1, one `Error:` line naming the cause, no traceback, no password."""
    assert status == 1, output
    assert "Traceback" not in output, output
    assert PASSWORD not in output, output
    errors = [line for line in output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], output
    return errors[0]


def with_password(url: str, **changes: object) -> str:
    return make_url(url).set(password=PASSWORD, **changes).render_as_string(hide_password=False)


# -- sagaz db upgrade ----------------------------------------------------------------------


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
def test_upgrade_of_an_unreachable_database_is_one_line(
    postgres_server_url: str, driver: str, tmp_path: Path
) -> None:
    url = with_password(postgres_server_url, drivername=driver, port=closed_port())
    status, output = sagaz("db", "upgrade", "--url", url, cwd=tmp_path)
    line = assert_one_line_failure(status, output, "database error at", ":***@127.0.0.1")
    assert output.strip() == line
    assert "refused" in line.lower() or "connect call failed" in line.lower()


def test_upgrade_into_a_schema_it_may_not_create_in_is_one_line(
    pg_empty: DatabaseUrls, tmp_path: Path
) -> None:
    url = with_password(pg_empty.url)
    status, output = sagaz("db", "upgrade", "--url", url, "--schema", "pg_catalog", cwd=tmp_path)
    assert_one_line_failure(status, output, "permission denied", "42501")
    engine = pg_empty.sync_engine()
    with engine.connect() as connection:
        created = connection.scalar(
            sa.text("SELECT to_regclass('pg_catalog.sagaz_alembic_version')")
        )
    engine.dispose()
    assert created is None


@pytest.mark.parametrize("schema", ["the test schema", "a new schema"])
def test_upgrade_as_a_role_without_the_privilege_is_one_line(
    postgres_server_url: str, pg_empty: DatabaseUrls, tmp_path: Path, schema: str
) -> None:
    with limited_role(postgres_server_url, pg_empty) as url:  # USAGE on the schema only
        target = str(pg_empty.schema) if schema == "the test schema" else f"{pg_empty.schema}_new"
        status, output = sagaz("db", "upgrade", "--url", url, "--schema", target, cwd=tmp_path)
    expected = "for schema" if schema == "the test schema" else "for database"
    assert_one_line_failure(status, output, "permission denied", expected, "42501")


def test_upgrade_of_a_read_only_sqlite_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "read-only.db"
    sa.create_engine(f"sqlite:///{path}").connect().close()  # an empty database file
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    status, output = sagaz("db", "upgrade", "--url", url, cwd=tmp_path)
    assert_one_line_failure(status, output, "readonly database")


# -- sagaz worker --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("runners", "table"),
    [(["--no-outbox"], "sagaz_sagas"), (["--no-sagas"], "sagaz_outbox"), ([], "sagaz_")],
)
def test_a_worker_whose_role_may_only_select_stops_with_one_line(
    postgres_server_url: str, pg: DatabaseUrls, tmp_path: Path, runners: list[str], table: str
) -> None:
    """It used to log "starting anyway" and then an error with the SQL every second."""
    with limited_role(postgres_server_url, pg, SELECT_ONLY) as url:
        status, output = sagaz(
            "worker", "--url", url, "--import", SAGAS, "--poll-interval", "0.1",
            "--broker-url", f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0", *runners,
            cwd=tmp_path,
        )  # fmt: skip
    assert_one_line_failure(status, output, "permission denied for table", table, "42501")
    assert "[SQL:" not in output
    assert "starting anyway" not in output
    failures = [line for line in output.splitlines() if "permission denied" in line]
    assert len(failures) <= 4, output  # a line per runner (+ retention), the command's error


def test_a_worker_on_a_read_only_sqlite_file_stops_with_one_line(
    sqlite: DatabaseUrls, tmp_path: Path
) -> None:
    url = f"sqlite:///file:{tmp_path / 'sagaz-test.db'}?mode=ro&uri=true"
    status, output = sagaz(
        "worker", "--url", url, "--import", SAGAS, "--poll-interval", "0.1", cwd=tmp_path
    )
    assert_one_line_failure(status, output, "readonly database")


def test_a_worker_whose_runs_may_not_write_steps_stops_with_one_line(
    postgres_server_url: str, pg: DatabaseUrls, tmp_path: Path
) -> None:
    """Claims work, a run's step writes are refused for good: it used to release the
    saga for a retry and log the same ERROR forever."""
    engine = pg.sync_engine()
    with Session(engine) as session:
        saga_id = start_saga(session, FlakySaga, {"counter": str(tmp_path / "n"), "failures": 0})
        session.commit()
    engine.dispose()
    with limited_role(postgres_server_url, pg, *ALL_BUT_STEP_WRITES) as url:
        status, output = sagaz(
            "worker", "--url", url, "--import", SAGAS, "--poll-interval", "0.1", "--no-outbox",
            cwd=tmp_path,
        )  # fmt: skip
    assert_one_line_failure(status, output, "permission denied for table sagaz_saga_steps")
    assert f"running saga {saga_id} failed, stopping" in output
    assert "for a retry" not in output
