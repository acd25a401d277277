"""The Django example runs the way its README says: migrate, runserver, sagaz_worker,
curl, sagaz_list, and its own `manage.py test` - on a SQLite file in a temporary
directory (DATABASE_URL), writing nothing into the example's directory."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "integrations" / "django_app"


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'orders.sqlite3'}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "error",
    }


def manage(env: dict[str, str], *args: str, timeout: float = 120) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def started(env: dict[str, str]) -> Iterator[Callable[..., subprocess.Popen[str]]]:
    processes: list[subprocess.Popen[str]] = []

    def start(*args: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "manage.py", *args],
            cwd=EXAMPLE,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def call(url: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url, data=data, headers={"content-type": "application/json"} if data else {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, {}


def wait_for(check: Callable[[], bool], seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except (urllib.error.URLError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"not done within {seconds}s")
        time.sleep(0.1)


def test_the_example_runs_as_its_readme_says(
    env: dict[str, str], started: Callable[..., subprocess.Popen[str]]
) -> None:
    before = sorted(str(path) for path in EXAMPLE.rglob("*"))
    assert "Applying sagaz.0001_initial... OK" in manage(env, "migrate")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = started("runserver", "--noreload", f"127.0.0.1:{port}")
    worker = started("sagaz_worker", "--poll-interval", "0.2")
    wait_for(lambda: call(f"{base}/sagaz/health")[0] == 200)

    status, book = call(f"{base}/orders", {"item": "book", "amount": "12.50"})
    assert (status, book["status"]) == (201, "placed")
    status, tv = call(f"{base}/orders", {"item": "tv", "amount": "5000"})
    assert status == 201
    wait_for(lambda: call(f"{base}/orders/{book['id']}")[1]["status"] == "shipped")
    wait_for(lambda: call(f"{base}/orders/{tv['id']}")[1]["status"] == "cancelled")
    status, _ = call(f"{base}/orders", {"item": "x", "amount": "1", "fail_after_start": True})
    assert status == 500
    assert call(f"{base}/orders/{tv['id'] + 1}")[0] == 404  # rolled back, saga and all
    wait_for(lambda: call(f"{base}/sagaz/health")[1]["outbox"]["pending"] == 0)

    listing = manage(env, "sagaz_list", "--instances")
    assert "django-order" in listing
    assert "completed" in listing
    assert "compensated" in listing

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    server.send_signal(signal.SIGTERM)
    server.communicate(timeout=30)

    assert "OK" in manage(env, "test", "orders")
    assert sorted(str(path) for path in EXAMPLE.rglob("*")) == before
