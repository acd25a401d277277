"""run_sync and the extension's lifecycle: one long-lived event loop per app (started on
first use, never per request) serves sync views under threads, async views and threads
whose own loop is running; close() - and the end of the interpreter - release every
connection and thread. Connections are counted in pg_stat_activity by the test's own
application_name."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask

from sagaz import SagaStatus
from sagaz.integrations.flask import SagazExtension
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import build_app, dispose_db_engines, running
from tests.integrations.integration_helpers import (
    IntegrationOrderSaga,
    saga_row,
    settled_pg_connections,
)

pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[2]


def sagaz_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sagaz-flask-")]


@pytest.fixture
def built(app_db: DatabaseUrls) -> Iterator[tuple[Flask, SagazExtension]]:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        yield app, extension


def test_run_sync_runs_the_saga_to_its_end_and_journals_it(
    built: tuple[Flask, SagazExtension], sync_db: sa.Engine
) -> None:
    app, _extension = built
    client = app.test_client()
    done = client.post("/run").get_json()
    assert done["status"] == "completed"
    failed = client.post("/run", query_string={"fail": "1"}).get_json()
    assert failed["status"] == "compensated"  # reported, not raised
    for body in (done, failed):
        saga = saga_row(sync_db, body["saga_id"])
        assert saga is not None
        assert saga.status == body["status"]


def test_create_saga_binds_the_apps_config(built: tuple[Flask, SagazExtension]) -> None:
    app, extension = built
    with app.app_context():
        saga = extension.create_saga(IntegrationOrderSaga)
        assert saga.config is extension.config()
        assert extension.run_sync(saga, {"n": "instance"}).status is SagaStatus.COMPLETED
    with pytest.raises(TypeError, match="Saga subclass"):
        extension.create_saga(dict)  # type: ignore[type-var]


def test_nothing_starts_before_first_use_and_one_loop_serves_every_thread(
    built: tuple[Flask, SagazExtension],
) -> None:
    app, _extension = built
    client = app.test_client()
    assert client.post("/orders").status_code == 201
    assert sagaz_threads() == []  # init_app and a request without run_sync start nothing

    def run(n: int) -> str:
        return str(app.test_client().post("/run", query_string={"n": n}).get_json()["status"])

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(run, range(40)))
    assert statuses == ["completed"] * 40
    assert [t.name for t in sagaz_threads()] == [f"sagaz-flask-{app.name}"]


def test_run_sync_inside_threads_with_a_running_event_loop_leaks_nothing(
    app_db: DatabaseUrls, admin: sa.Engine
) -> None:
    app, extension = build_app(app_db.url)
    name = app_db.application_name
    assert name is not None
    with running(app, extension):

        async def inside_a_loop() -> list[str]:
            asyncio.get_running_loop()
            with app.app_context():
                return [
                    extension.run_sync(IntegrationOrderSaga, {"n": n}).status.value
                    for n in range(10)
                ]

        results: list[list[str]] = []
        threads = [
            threading.Thread(target=lambda: results.append(asyncio.run(inside_a_loop())))
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == [["completed"] * 10] * 4
        # an async view: Flask runs it on an event loop of its own
        response = app.test_client().post("/run-async")
        assert response.get_json()["status"] == "completed"
        # bounded by the pools (sagaz's async pool and the db's), not by the calls
        assert 0 < settled_pg_connections(admin, name, at_most=10) <= 10
    assert settled_pg_connections(admin, name, at_most=0) == 0
    assert sagaz_threads() == []


def test_creating_and_closing_the_app_ten_times_leaves_nothing_behind(
    app_db: DatabaseUrls, admin: sa.Engine
) -> None:
    name = app_db.application_name
    assert name is not None
    threads_before = set(threading.enumerate())
    for _ in range(10):
        app, extension = build_app(app_db.url)
        client = app.test_client()
        assert client.post("/orders").status_code == 201
        assert client.post("/run").get_json()["status"] == "completed"
        assert client.get("/sagaz/health").status_code == 200
        assert pg_in_use(admin, name)
        extension.close()
        extension.close()  # idempotent
        dispose_db_engines(app)
    assert settled_pg_connections(admin, name, at_most=0) == 0
    assert set(threading.enumerate()) == threads_before


def pg_in_use(admin: sa.Engine, name: str) -> bool:
    return settled_pg_connections(admin, name, at_most=0, seconds=0) > 0


def test_a_closed_extension_starts_afresh_on_next_use(
    built: tuple[Flask, SagazExtension],
) -> None:
    app, extension = built
    client = app.test_client()
    assert client.post("/run").get_json()["status"] == "completed"
    extension.close()
    assert sagaz_threads() == []
    assert client.post("/run").get_json()["status"] == "completed"
    assert len(sagaz_threads()) == 1


def test_the_interpreter_exits_cleanly_without_close(tmp_path: Path) -> None:
    """At exit the extension stops its runtime - its config is closed - and its loop:
    no hang, no warning."""
    script = textwrap.dedent(
        f"""
        import atexit
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from sagaz.integrations.flask import SagazExtension
        from sagaz.store import migrations
        from tests.integrations.integration_helpers import IntegrationOrderSaga

        url = "sqlite:///{tmp_path / "exit.db"}"
        migrations.upgrade(url)
        app = Flask("exit")
        app.config["SQLALCHEMY_DATABASE_URI"] = url
        db = SQLAlchemy(app)
        sagaz = SagazExtension(app, db)
        # registered before sagaz's own exit handler, so it runs after it
        atexit.register(lambda: print("initialized at exit:", sagaz.config(app).initialized))
        with app.app_context():
            print(sagaz.run_sync(IntegrationOrderSaga, {{"n": 1}}).status.value)
            print("initialized:", sagaz.config().initialized)
        """
    )
    done = subprocess.run(
        [sys.executable, "-W", "error", "-X", "dev", "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n") == [
        "completed",
        "initialized: True",
        "initialized at exit: False",
        "",
    ]
    assert done.stderr == ""
