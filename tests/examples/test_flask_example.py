"""The Flask example runs the way its README says - `flask --app flask_orders sagaz db
upgrade`, `flask --app flask_orders run` and `flask --app flask_orders sagaz worker`
from its directory, on SQLite and on PostgreSQL - and 1,000 requests from 8 threads
through it on a threaded server leave no database connection or thread behind."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from werkzeug.serving import make_server

from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import settled_pg_connections

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "flask_app"
FLASK = str(Path(sys.executable).parent / "flask")
BOOK = {"item": "book", "quantity": 2, "unit_price_cents": 1250}
NO_STOCK = {"item": "unobtainium", "quantity": 1, "unit_price_cents": 100}
LAMP = {"item": "lamp", "quantity": 1, "unit_price_cents": 4000}


def call(
    base: str, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body) of one HTTP request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, method=method)
    request.add_header("content-type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), None


def poll(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while not (result := check()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds}s")
        time.sleep(0.05)
    return result


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def pg_admin(postgres_server_url: str) -> Iterator[sa.Engine]:
    """A connection-less engine outside the test's application_name: pg_stat_activity."""
    url = sa.make_url(postgres_server_url).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_uri(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}"
    urls: DatabaseUrls = request.getfixturevalue("pg_empty")
    return urls.url


@pytest.fixture
def flask_command(database_uri: str) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    """Starts ``flask --app flask_orders ...`` in the example's directory; every process
    still running at the end gets SIGTERM."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SAGAZ_", "FLASK_"))}
    env.update(FLASK_SQLALCHEMY_DATABASE_URI=database_uri, PYTHONDONTWRITEBYTECODE="1")
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [FLASK, "--app", "flask_orders", *args],
            cwd=EXAMPLE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.communicate(timeout=30)


def finished(process: subprocess.Popen[str], seconds: float = 60.0) -> tuple[int, str]:
    output, _ = process.communicate(timeout=seconds)
    return process.returncode, output


def test_the_example_runs_as_its_readme_says(
    flask_command: Callable[..., subprocess.Popen[str]],
) -> None:
    files_before = sorted(EXAMPLE.rglob("*"))
    code, output = finished(flask_command("sagaz", "db", "upgrade"))
    assert code == 0, output
    assert "(head)" in output

    port = unused_port()
    server = flask_command("run", "--port", str(port))
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, server.communicate()[0]
        try:
            return call(base, "GET", "/sagaz/health")[0] == 200
        except OSError:
            return False

    poll(healthy)
    status, headers, book = call(base, "POST", "/orders", BOOK, {"X-Correlation-ID": "ex-1"})
    assert status == 201
    assert headers["X-Correlation-ID"] == "ex-1" == book["correlation_id"]
    assert call(base, "POST", "/orders", NO_STOCK)[0] == 201
    assert call(base, "POST", "/orders", {"item": ""})[0] == 400
    status, _headers, now = call(base, "POST", "/orders/now", LAMP)
    assert (status, now["saga"]) == (201, "completed")  # run_sync: no worker involved
    assert call(base, "GET", f"/orders/{now['order_id']}")[2]["status"] == "shipped"
    first = call(base, "GET", f"/orders/{book['order_id']}")[2]
    assert (first["status"], first["saga"]["status"]) == ("placed", "pending")

    worker = flask_command("sagaz", "worker")

    def saga_of(order_id: int) -> Any:
        assert worker.poll() is None, worker.communicate()[0]
        order = call(base, "GET", f"/orders/{order_id}")[2]
        return order if order["saga"]["status"] not in ("pending", "running") else None

    shipped = poll(lambda: saga_of(book["order_id"]))
    assert (shipped["status"], shipped["saga"]["status"]) == ("shipped", "completed")
    declined = poll(lambda: saga_of(2))
    assert (declined["status"], declined["saga"]["status"]) == ("placed", "compensated")
    # the relay published every event (placed x3, shipped x2)
    poll(lambda: call(base, "GET", "/sagaz/health")[2]["outbox"]["pending"] == 0)

    worker.send_signal(signal.SIGTERM)
    code, output = finished(worker)
    assert code == 0, output
    assert "sagaz worker stopped" in output
    server.send_signal(signal.SIGTERM)
    finished(server)
    assert sorted(EXAMPLE.rglob("*")) == files_before  # nothing written in the tree


@pytest.mark.postgres
@pytest.mark.slow
def test_1000_requests_from_8_threads_leave_no_connection_or_thread_behind(
    pg: DatabaseUrls, pg_admin: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    from flask_orders import create_app
    from flask_orders.app import sagaz
    from flask_orders.models import db

    name = pg.application_name
    assert name is not None
    threads_before = set(threading.enumerate())
    app = create_app({"SQLALCHEMY_DATABASE_URI": pg.url})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    serving = threading.Thread(target=server.serve_forever, name="test-wsgi-server")
    serving.start()

    def client(number: int) -> list[int]:
        """125 requests on one keep-alive connection; every 25th runs its saga in the
        request (run_sync)."""
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        body = json.dumps({**BOOK, "quantity": number + 1})
        statuses = []
        try:
            for request in range(125):
                path = "/orders/now" if request % 25 == 0 else "/orders"
                connection.request("POST", path, body, {"content-type": "application/json"})
                with connection.getresponse() as response:
                    response.read()
                    statuses.append(response.status)
        finally:
            connection.close()
        return statuses

    try:
        with ThreadPoolExecutor(8) as pool:
            results = [status for statuses in pool.map(client, range(8)) for status in statuses]
        assert results == [201] * 1000
        with app.app_context():
            # every connection went back (a request's teardown may end a moment after the
            # client read its response: the server thread finishes it)
            deadline = time.monotonic() + 5
            while db.engine.pool.checkedout() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert db.engine.pool.checkedout() == 0
            pool_size = db.engine.pool.size()  # type: ignore[attr-defined]
        # sagaz's async pool and the db's pool, each kept at its size: no growth
        assert settled_pg_connections(pg_admin, name, at_most=2 * pool_size) <= 2 * pool_size
    finally:
        server.shutdown()
        serving.join(10)
        sagaz.close()
        with app.app_context():
            db.engine.dispose()
    assert settled_pg_connections(pg_admin, name, at_most=0) == 0
    assert set(threading.enumerate()) <= threads_before
    with pg_admin.connect() as connection:
        orders = connection.scalar(sa.text(f'SELECT count(*) FROM "{pg.schema}".orders'))
        sagas = connection.scalar(sa.text(f'SELECT count(*) FROM "{pg.schema}".sagaz_sagas'))
    assert (orders, sagas) == (1000, 1000)
