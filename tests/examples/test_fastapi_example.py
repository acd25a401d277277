"""The FastAPI example runs the way its README says: `python -m sagaz db upgrade`,
`uvicorn fastapi_orders.app:app` and `python -m sagaz worker --import
fastapi_orders.sagas` from its directory - on SQLite (the default) and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import DatabaseUrls

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "fastapi_app"


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'orders.db'}"
    urls: DatabaseUrls = request.getfixturevalue("pg_empty")
    return urls.url


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for(check: Callable[[], Any], seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {seconds}s")
        time.sleep(0.05)


class Processes:
    """Subprocesses started in the example's directory, stopped with SIGTERM at the end."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.started: list[subprocess.Popen[str]] = []

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *args],
            cwd=EXAMPLE,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, *args],
            cwd=EXAMPLE,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.started.append(process)
        return process

    def stop_all(self) -> list[tuple[int, str]]:
        outcomes = []
        for process in self.started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
            try:
                output, _ = process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                output, _ = process.communicate()
            outcomes.append((process.returncode, output))
        return outcomes


@pytest.fixture
def processes(database_url: str) -> Iterator[Processes]:
    env = {
        **os.environ,
        "SAGAZ_DATABASE_URL": database_url,
        "PYTHONDONTWRITEBYTECODE": "1",  # nothing written into the example's directory
        "PYTHONNODEBUGRANGES": "1",
    }
    env.pop("ORDERS_IN_PROCESS_WORKER", None)
    running = Processes(env)
    yield running
    running.stop_all()


def order(client: httpx2.Client, item: str, quantity: int, cents: int, **kw: Any) -> Any:
    response = client.post(
        "/orders" + kw.pop("path", ""),
        json={"item": item, "quantity": quantity, "unit_price_cents": cents},
        **kw,
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_the_example_runs_as_its_readme_says(processes: Processes) -> None:
    before = sorted(p.name for p in EXAMPLE.rglob("*"))
    migrated = processes.run("-m", "sagaz", "db", "upgrade")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr

    port = free_port()
    server = processes.start(
        "-m", "uvicorn", "fastapi_orders.app:app", "--port", str(port), "--log-level", "warning"
    )
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def ready() -> bool:
            assert server.poll() is None, server.communicate()[0]
            try:
                return client.get("/sagaz/health").status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(ready)
        shipped = order(client, "book", 2, 1250, headers={"X-Correlation-ID": "readme-1"})
        assert shipped["correlation_id"] == "readme-1"
        out_of_stock = order(client, "unobtainium", 1, 100)
        declined = order(client, "piano", 1, 250_000)
        express = order(client, "pen", 3, 99, path="/express")  # run by the web process

        # Nothing but the express order runs until the worker starts.
        assert client.get(f"/orders/{shipped['order_id']}").json()["saga"]["status"] == "pending"
        processes.start("-m", "sagaz", "worker", "--import", "fastapi_orders.sagas")

        def saga_status(placed: dict[str, Any], wanted: str, status: str = "placed") -> Any:
            body = client.get(f"/orders/{placed['order_id']}").json()
            return body if (body["saga"]["status"], body["status"]) == (wanted, status) else None

        assert wait_for(lambda: saga_status(shipped, "completed", "shipped"))
        assert wait_for(lambda: saga_status(express, "completed", "shipped"))
        stock = wait_for(lambda: saga_status(out_of_stock, "compensated"))
        assert "no unobtainium in stock" in stock["saga"]["error"]
        card = wait_for(lambda: saga_status(declined, "compensated"))
        assert "card declined" in card["saga"]["error"]

        assert client.get("/orders/999").status_code == 404
        health = client.get("/sagaz/health").json()
        assert health["status"] == "ok"
        assert set(health["outbox"]) == {"pending", "dead", "oldest_pending_age_seconds"}

    (server_code, server_log), (worker_code, worker_log) = processes.stop_all()
    # uvicorn shuts down gracefully, then re-raises SIGTERM; the worker exits 0.
    assert server_code in (0, -signal.SIGTERM), server_log
    assert "Traceback" not in server_log
    assert worker_code == 0, worker_log
    assert "sagaz worker stopped" in worker_log
    assert sorted(p.name for p in EXAMPLE.rglob("*")) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_single_process_demo_mode(processes: Processes) -> None:
    """`ORDERS_IN_PROCESS_WORKER=1 uvicorn fastapi_orders.app:app`: no `sagaz worker`."""
    assert processes.run("-m", "sagaz", "db", "upgrade").returncode == 0
    processes.env["ORDERS_IN_PROCESS_WORKER"] = "1"
    port = free_port()
    server = processes.start(
        "-m", "uvicorn", "fastapi_orders.app:app", "--port", str(port), "--log-level", "warning"
    )
    with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:

        def ready() -> bool:
            assert server.poll() is None, server.communicate()[0]
            try:
                return client.get("/sagaz/health").status_code == 200
            except httpx2.TransportError:
                return False

        wait_for(ready)
        placed = order(client, "book", 1, 500)

        def shipped() -> bool:
            body = client.get(f"/orders/{placed['order_id']}").json()
            return bool(body["status"] == "shipped" and body["saga"]["status"] == "completed")

        wait_for(shipped)
        wait_for(lambda: client.get("/sagaz/health").json()["outbox"]["pending"] == 0)
    [(code, log)] = processes.stop_all()
    assert code in (0, -signal.SIGTERM), log
    assert "Traceback" not in log
