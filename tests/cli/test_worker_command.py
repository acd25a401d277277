"""`sagaz worker`: bad options, variables and databases are one-line errors; its settings
come from SagaConfig (SAGAZ_* variables, overridden by options) and reach the sagas it
runs and the relay it starts."""

from __future__ import annotations

import importlib
import os
import signal
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.orm import Session

from sagaz import ParallelFailureStrategy, SagaConfig, start_saga
from sagaz import runtime as runtime_module
from sagaz.cli import main
from sagaz.cli.worker import CONFIG_META_KEY, worker
from sagaz.engine import RunOptions
from sagaz.observability import log_transition
from sagaz.runtime import SagaRuntime
from sagaz.store.schema import sagas
from sagaz.worker import SagaWorker
from tests.cli.conftest import StartWorker
from tests.cli.sagas_for_cli import FlakySaga, GatedSaga
from tests.conftest import DatabaseUrls

# `sagaz.cli.worker` the attribute is the command; the module is reached by its name
worker_module = importlib.import_module("sagaz.cli.worker")
ROOT = Path(__file__).resolve().parents[2]
SAGAS = "tests.cli.sagas_for_cli"


@pytest.fixture(autouse=True)
def no_sagaz_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("SAGAZ_") and name != "SAGAZ_TEST_DATABASE_URL":
            monkeypatch.delenv(name)


def run(args: list[str], env: dict[str, str] | None = None) -> Result:
    # catch_exceptions=False: an exception that escapes click (a traceback) fails the test.
    return CliRunner().invoke(main, ["worker", *args], env=env, catch_exceptions=False)


def assert_one_line_error(result: Result, fragment: str, exit_code: int = 2) -> None:
    assert result.exit_code == exit_code, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output
    error_lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, result.output


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--url", "nope"], "--url is not a valid SQLAlchemy URL"),
        (["--url", "mysql://app@db/app"], "sagaz supports postgresql and sqlite, not mysql"),
        (["--url", "postgresql://app:secret@db:port/app"], "postgresql://app:***@"),
        (["--broker-url", "bogus://x"], "--broker-url has an unknown broker URL scheme"),
        (["--broker-url", "no-scheme"], "--broker-url must look like scheme://"),
        (["--broker-url", "memory://?delay=abc"], "--broker-url: broker URL option delay='abc'"),
        (["--concurrency", "0"], "Invalid value for '--concurrency'"),
        (["--batch-size", "0"], "Invalid value for '--batch-size'"),
        (["--poll-interval", "0"], "Invalid value for '--poll-interval'"),
        (["--poll-interval", "-1"], "Invalid value for '--poll-interval'"),
        (["--lease-seconds", "0"], "--lease-seconds must be > 0"),
        (["--lease-seconds", "-2"], "--lease-seconds must be > 0"),
        (["--lease-seconds", "long"], "Invalid value for '--lease-seconds'"),
        (["--shutdown-grace", "0"], "Invalid value for '--shutdown-grace'"),
        (["--shutdown-grace", "-1"], "Invalid value for '--shutdown-grace'"),
        (["--max-attempts", "0"], "Invalid value for '--max-attempts'"),
        (["--log-level", "bogus"], "Invalid value for '--log-level'"),
        (["--published-retention-hours", "0"], "must be > 0 hours (or 'off'"),
        (["--inbox-retention-hours", "soon"], "neither a number of hours nor 'off'"),
        (["--retention-interval", "0"], "Invalid value for '--retention-interval'"),
        (["--relay-lease-seconds", "0"], "Invalid value for '--relay-lease-seconds'"),
    ],
)
def test_bad_options_are_one_line_errors(
    sqlite: DatabaseUrls, args: list[str], fragment: str
) -> None:
    result = run(["--url", sqlite.url, "--import", SAGAS, *args])
    assert_one_line_error(result, fragment)
    assert "secret" not in result.output


@pytest.mark.parametrize(
    ("variable", "value", "fragment"),
    [
        ("SAGAZ_DATABASE_URL", "nope", "SAGAZ_DATABASE_URL (SagaConfig.database_url) is not"),
        ("SAGAZ_BROKER_URL", "zz://x", "SAGAZ_BROKER_URL (SagaConfig.broker_url) has an unknown"),
        ("SAGAZ_LEASE_SECONDS", "0", "SAGAZ_LEASE_SECONDS (SagaConfig.lease_seconds) must be > 0"),
        ("SAGAZ_LEASE_SECONDS", "long", "SAGAZ_LEASE_SECONDS must be a number"),
        ("SAGAZ_MAX_RETRIES", "three", "SAGAZ_MAX_RETRIES must be an integer"),
        ("SAGAZ_FAILURE_STRATEGY", "sometimes", "SAGAZ_FAILURE_STRATEGY must be one of"),
        ("SAGAZ_PUBLISHED_RETENTION_HOURS", "-1", "'--published-retention-hours'"),
        ("SAGAZ_RELAY_LEASE_SECONDS", "soon", "'--relay-lease-seconds'"),
    ],
)
def test_bad_variables_are_one_line_errors_naming_them(
    variable: str, value: str, fragment: str
) -> None:
    result = run(["--import", SAGAS], env={variable: value})
    assert_one_line_error(result, fragment)


def test_the_command_line_wins_over_a_bad_variable(sqlite: DatabaseUrls) -> None:
    result = run(
        ["--url", sqlite.url, "--broker-url", "bogus://x", "--no-sagas"],
        env={"SAGAZ_BROKER_URL": "memory://"},
    )
    assert_one_line_error(result, "--broker-url has an unknown broker URL scheme 'bogus://'")


def test_a_missing_sqlite_file_is_not_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(["--no-sagas", "--url", "sqlite:///sagaz.db"])
    assert_one_line_error(result, "there is no database at sagaz.db", exit_code=1)
    assert "sagaz db upgrade" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("args", [["--no-sagas"], ["--import", SAGAS]])
def test_without_a_url_it_refuses_to_start(
    args: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = run(args)  # no --url, no SAGAZ_DATABASE_URL: no default database
    assert_one_line_error(result, "no database given: pass --url or SAGAZ_DATABASE_URL")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_a_database_without_sagaz_tables_says_to_upgrade(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if kind == "postgresql":
        url = request.getfixturevalue("pg_empty").url
    else:
        path = tmp_path / "empty.db"
        engine = sa.create_engine(f"sqlite:///{path}")
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE unrelated (id INTEGER)"))
        engine.dispose()
        url = f"sqlite:///{path}"
    for args in (["--no-outbox", "--import", SAGAS], ["--no-sagas"]):
        result = run(["--url", url, "--log-level", "ERROR", *args])
        assert_one_line_error(result, "sagaz's tables do not exist in", exit_code=1)
        assert "run `sagaz db upgrade`" in result.output


# -- settings: SagaConfig, then options -------------------------------------------------


Captured = dict[str, Any]


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> Captured:
    """Build the worker's runtime for real, but record what it built instead of running it."""
    seen: Captured = {"saga_worker": None, "relay": None}

    class RecordingSagaWorker(SagaWorker):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            seen["saga_worker_options"] = kwargs
            super().__init__(*args, **kwargs)

    async def serve(runtime: SagaRuntime, url_origin: str) -> None:
        await runtime.build()
        seen["saga_worker"] = runtime.worker if runtime.run_worker else None
        seen["relay"] = runtime.relay
        seen["broker"] = runtime.broker
        await runtime.stop()

    monkeypatch.setattr(runtime_module, "SagaWorker", RecordingSagaWorker)
    monkeypatch.setattr(worker_module, "serve", serve)
    return seen


ENVIRONMENT = {
    "SAGAZ_MAX_RETRIES": "2",
    "SAGAZ_RETRY_BACKOFF": "0.1",
    "SAGAZ_MAX_RETRY_BACKOFF": "4",
    "SAGAZ_STEP_TIMEOUT_SECONDS": "7",
    "SAGAZ_COMPENSATION_RETRIES": "5",
    "SAGAZ_FAILURE_STRATEGY": "wait_all",
    "SAGAZ_SAGA_TIMEOUT_SECONDS": "60",
    "SAGAZ_LEASE_SECONDS": "12",
    "SAGAZ_LOG_TRANSITIONS": "true",
    "SAGAZ_BROKER_URL": "memory://?delay=0.5",
}


def test_settings_come_from_the_environment(sqlite: DatabaseUrls, captured: Captured) -> None:
    result = run(["--import", SAGAS], env={**ENVIRONMENT, "SAGAZ_DATABASE_URL": sqlite.url})
    assert result.exit_code == 0, result.output
    options = captured["saga_worker_options"]
    assert options["options"] == RunOptions(
        failure_strategy=ParallelFailureStrategy.WAIT_ALL,
        saga_timeout_seconds=60.0,
        max_retries=2,
        retry_backoff=0.1,
        max_retry_backoff=4.0,
        step_timeout_seconds=7.0,
        compensation_retries=5,
    )
    assert tuple(options["listeners"]) == (log_transition,)
    saga_worker = captured["saga_worker"]
    assert saga_worker.lease_seconds == 12.0
    assert str(saga_worker.engine.url) == str(sqlite.async_)
    assert getattr(captured["broker"], "delay", None) == 0.5


def test_options_win_over_the_environment(sqlite: DatabaseUrls, captured: Captured) -> None:
    result = run(
        [
            "--url",
            sqlite.url,
            "--import",
            SAGAS,
            "--lease-seconds",
            "3",
            "--broker-url",
            "memory://",
        ],
        env={**ENVIRONMENT, "SAGAZ_DATABASE_URL": "postgresql://elsewhere/db"},
    )
    assert result.exit_code == 0, result.output
    assert captured["saga_worker"].lease_seconds == 3.0
    assert str(captured["saga_worker"].engine.url) == str(sqlite.async_)
    assert getattr(captured["broker"], "delay", None) in (None, 0, 0.0)
    assert captured["saga_worker_options"]["options"].max_retries == 2  # still from the env


def test_defaults_without_variables(sqlite: DatabaseUrls, captured: Captured) -> None:
    result = run(["--url", sqlite.url, "--import", SAGAS])
    assert result.exit_code == 0, result.output
    assert captured["saga_worker"].lease_seconds == 30.0
    assert captured["saga_worker_options"]["options"] == SagaConfig().run_options()
    assert tuple(captured["saga_worker_options"]["listeners"]) == ()
    relay = captured["relay"]
    assert relay.published_retention == timedelta(days=7)
    assert relay.inbox_retention == timedelta(days=7)
    assert relay.retention_interval == 300.0
    assert relay.claim_seconds == 5.0


def test_the_relay_lease_comes_from_its_option_or_variable(
    sqlite: DatabaseUrls, captured: Captured
) -> None:
    env = {"SAGAZ_RELAY_LEASE_SECONDS": "2.5"}
    result = run(["--url", sqlite.url, "--no-sagas"], env=env)
    assert result.exit_code == 0, result.output
    assert captured["relay"].claim_seconds == 2.5
    result = run(["--url", sqlite.url, "--no-sagas", "--relay-lease-seconds", "1"], env=env)
    assert result.exit_code == 0, result.output
    assert captured["relay"].claim_seconds == 1.0


def test_retention_options_reach_the_relay(sqlite: DatabaseUrls, captured: Captured) -> None:
    result = run(
        ["--url", sqlite.url, "--no-sagas", "--published-retention-hours", "1.5",
         "--retention-interval", "60"],
        env={"SAGAZ_INBOX_RETENTION_HOURS": "off"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    relay = captured["relay"]
    assert relay.published_retention == timedelta(hours=1.5)
    assert relay.inbox_retention is None
    assert relay.retention_interval == 60.0
    assert captured["saga_worker"] is None


def test_a_host_config_replaces_the_environment(sqlite: DatabaseUrls, captured: Captured) -> None:
    @click.group()
    @click.pass_context
    def host(ctx: click.Context) -> None:
        ctx.meta[CONFIG_META_KEY] = SagaConfig(
            database_url=sqlite.url, max_retries=4, lease_seconds=9
        )

    host.add_command(worker)
    runner = CliRunner()
    env = {"SAGAZ_MAX_RETRIES": "1"}
    result = runner.invoke(host, ["worker", "--import", SAGAS], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert captured["saga_worker_options"]["options"].max_retries == 4
    assert captured["saga_worker"].lease_seconds == 9
    result = runner.invoke(
        host, ["worker", "--import", SAGAS, "--lease-seconds", "2"], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    assert captured["saga_worker"].lease_seconds == 2


# -- a real worker process ----------------------------------------------------------------


def wait_until(check: Callable[[], bool], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def test_sagaz_max_retries_reaches_the_sagas_a_worker_runs(
    sqlite: DatabaseUrls, tmp_path: Path, start_worker: StartWorker
) -> None:
    engine = sqlite.sync_engine()
    with Session(engine) as session:
        twice = start_saga(session, FlakySaga, {"counter": str(tmp_path / "a"), "failures": 2})
        thrice = start_saga(session, FlakySaga, {"counter": str(tmp_path / "b"), "failures": 3})
        session.commit()
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SAGAZ_DATABASE_URL": sqlite.url,
        "SAGAZ_MAX_RETRIES": "2",
        "SAGAZ_RETRY_BACKOFF": "0",
        "SAGAZ_LOG_TRANSITIONS": "true",
    }
    process = start_worker(tmp_path, environment, "--no-outbox", "--log-level", "WARNING")

    def statuses() -> dict[str, str]:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(sagas.c.id, sagas.c.status)).all()
        return {str(row.id): str(row.status) for row in rows}

    terminal = {"completed", "compensated", "failed"}
    wait_until(lambda: process.poll() is not None or set(statuses().values()) <= terminal)
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    final = statuses()
    engine.dispose()
    assert final[twice] == "completed", errors  # three attempts: the first and two retries
    assert final[thrice] != "completed"
    assert (tmp_path / "a").read_text() == "3"
    assert (tmp_path / "b").read_text() == "3"
    # SAGAZ_LOG_TRANSITIONS: failed attempts are logged at WARNING by the listener
    assert "sagaz.transitions" in errors
    assert "flaky failure 1 of 2" in errors


def test_sigterm_leaves_a_step_blocked_in_a_thread_after_the_grace(
    sqlite: DatabaseUrls, tmp_path: Path, start_worker: StartWorker
) -> None:
    """A plain `def` step that never returns cannot be interrupted: the worker exits once
    its shutdown grace is over (rather than waiting for the thread for ever), says so,
    and leaves the saga to be resumed."""
    engine = sqlite.sync_engine()
    context = {"marker": "m", "entered": str(tmp_path / "entered"), "gate": str(tmp_path / "g")}
    with Session(engine) as session:
        saga_id = start_saga(session, GatedSaga, context)
        session.commit()
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "SAGAZ_DATABASE_URL": sqlite.url}
    process = start_worker(tmp_path, environment, "--no-outbox", "--log-level", "WARNING")
    wait_until(lambda: process.poll() is not None or Path(context["entered"]).exists())
    assert process.poll() is None, process.communicate()[1]
    process.send_signal(signal.SIGTERM)
    _, errors = process.communicate(timeout=60)  # without the fix: blocked for ever
    assert process.returncode == 0, errors
    assert "1 step(s) still running in threads after the shutdown grace" in errors
    with engine.connect() as connection:
        status = connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id))
    engine.dispose()
    assert status == "running"  # not finished here: the next worker resumes it
