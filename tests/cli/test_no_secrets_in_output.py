"""Everything a failing `sagaz worker` (saga worker and relay) and failing `sagaz`
commands print, as real processes, holds neither the password of the database and
broker URLs nor the user data of a saga whose run fails at the database.

The database connection is cut through a TCP proxy while a saga's step runs (as in a
PostgreSQL restart), so the write of the step's result fails; another saga's result -
which holds the marker - is refused once by the database (a trigger raising a
serialization failure), so a statement whose parameters hold the marker fails; the
broker URL points at a closed port, so every publish fails; other commands target a
closed port. Failures are single lines: no traceback, no SQL, no parameters.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncSession

from sagaz import outbox, start_saga
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from tests.brokers.broker_helpers import TcpProxy
from tests.cli.sagas_for_cli import GatedSaga
from tests.conftest import DatabaseUrls
from tests.roles import PASSWORD
from tests.store.test_failures import closed_port

ROOT = Path(__file__).resolve().parents[2]
MARKER = "marker-c41f-user-data"
#: The first write of a step result holding "fail-once" is refused by the database.
REFUSE_ONCE = [
    "CREATE SEQUENCE refuse_once",
    """CREATE FUNCTION refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        -- nested: AND does not short-circuit, and nextval must count refused rows only
        IF strpos(COALESCE(NEW.result::text, ''), 'fail-once') > 0 THEN
            IF nextval('refuse_once') = 1 THEN
                RAISE EXCEPTION 'injected';  -- P0001: not transient, not a lost connection
            END IF;
        END IF;
        RETURN NEW;
    END $$""",
    "CREATE TRIGGER refuse_once BEFORE INSERT OR UPDATE ON sagaz_saga_steps "
    "FOR EACH ROW EXECUTE FUNCTION refuse_once()",
]


def environment() -> dict[str, str]:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("SAGAZ_")}
    return {**clean, "PYTHONPATH": str(ROOT)}


def start_worker(url: str, broker_url: str, log: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "sagaz", "worker", "--url", url, "--broker-url", broker_url,
        "--import", "tests.cli.sagas_for_cli", "--lease-seconds", "2", "--poll-interval",
        "0.2", "--shutdown-grace", "1", "--log-level", "INFO",
    ]  # fmt: skip
    with log.open("wb") as output:
        return subprocess.Popen(
            command, cwd=log.parent, env=environment(), stdout=output, stderr=subprocess.STDOUT
        )


def run_command(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sagaz", *args],
        cwd=cwd,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=120,  # a safety net: each ends on its own within seconds
    )
    assert done.returncode == 1, done.stdout
    return done.stdout


async def until(check: Callable[[], bool], seconds: float = 60) -> None:
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(check):
            await asyncio.sleep(0.05)


async def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0


def assert_clean(name: str, output: str) -> None:
    assert output, name
    for forbidden in (PASSWORD, MARKER, "Traceback", "[SQL:", "[parameters:"):
        assert forbidden not in output, f"{name} printed {forbidden!r}:\n{output}"


async def test_failing_worker_relay_and_commands_print_no_password_and_no_user_data(
    pg: DatabaseUrls, tmp_path: Path
) -> None:
    server = make_url(pg.url)
    proxy = TcpProxy((server.host or "127.0.0.1", server.port or 5432))
    await proxy.start()
    through_proxy = server.set(port=proxy.port, password=PASSWORD)
    unreachable = server.set(port=closed_port(), password=PASSWORD)
    broker_url = f"redis://:{PASSWORD}@127.0.0.1:{closed_port()}/0"
    logs = {"worker": tmp_path / "worker.log", "unreachable worker": tmp_path / "down.log"}
    direct = pg.async_engine()
    sync_engine = pg.sync_engine()
    context = {
        "marker": MARKER,
        "entered": str(tmp_path / "entered"),
        "gate": str(tmp_path / "gate"),
    }
    refused_once = {
        "marker": f"{MARKER}-fail-once",
        "entered": str(tmp_path / "entered-2"),
        "gate": str(tmp_path / "gate-2"),
    }
    await asyncio.to_thread(Path(refused_once["gate"]).touch)
    with sync_engine.begin() as connection:
        for statement in REFUSE_ONCE:
            connection.exec_driver_sql(statement)
    async with AsyncSession(direct) as session:
        refused_id = start_saga(session, GatedSaga, refused_once)
        await session.commit()
    async with AsyncSession(direct) as session:
        saga_id = start_saga(session, GatedSaga, context)
        outbox.add(session, "secrets.test", {"marker": MARKER})
        await session.commit()

    def saga_status(saga: str) -> str:
        with sync_engine.connect() as connection:
            return str(connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga)))

    def publish_failed() -> bool:
        with sync_engine.connect() as connection:
            # A broker outage counts no attempt but stores its error (relay_pass.is_outage).
            failed = sa.select(outbox_table.c.seq).where(outbox_table.c.last_error.is_not(None))
            return connection.scalar(failed.limit(1)) is not None

    def logged(name: str, fragment: str) -> Callable[[], bool]:
        return lambda: fragment in logs[name].read_text()

    plain = lambda url: url.render_as_string(hide_password=False)  # noqa: E731
    worker = start_worker(plain(through_proxy), broker_url, logs["worker"])
    down = start_worker(plain(unreachable), broker_url, logs["unreachable worker"])
    try:
        # first a write the database refuses (not a connection failure), then the cut
        await until(logged("worker", f"running saga {refused_id} failed"))
        await until(lambda: saga_status(refused_id) == "completed")
        await until(Path(context["entered"]).exists)
        proxy.drop()  # every connection of the worker breaks, new ones are refused
        await asyncio.to_thread(Path(context["gate"]).touch)  # the step returns: its write fails
        await until(logged("worker", f"running saga {saga_id} stopped"))
        proxy.restore()
        await until(lambda: saga_status(saga_id) == "completed")
        await until(publish_failed)  # the relay tried, the broker refused
        await until(logged("unreachable worker", "claiming failed"))
        await until(logged("unreachable worker", "pass failed"))
    finally:
        try:
            for process in (worker, down):
                if process.poll() is None:
                    await stop(process)
        finally:
            for process in (worker, down):  # never left running, whatever failed above
                if process.poll() is None:
                    process.kill()
                    process.wait()
        await proxy.close()
        await direct.dispose()
        sync_engine.dispose()
    outputs = {name: path.read_text() for name, path in logs.items()}
    closed = plain(unreachable)
    outputs["db upgrade"] = run_command("db", "upgrade", "--url", closed, cwd=tmp_path)
    outputs["db current"] = run_command("db", "current", "--url", closed, cwd=tmp_path)
    outputs["list"] = run_command("list", "--instances", "--url", closed, cwd=tmp_path)
    outputs["dlq list"] = run_command("dlq", "list", "--url", closed, cwd=tmp_path)
    for name, output in outputs.items():
        assert_clean(name, output)
    assert ":***@" in outputs["worker"]  # the broker URL, named without its password
    assert "starting anyway" in outputs["unreachable worker"]
