"""`sagaz worker` subprocesses for the process-level worker tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[2]


class WorkerProcesses:
    def __init__(self, url: str, module: str = "tests.worker.sagas_for_workers") -> None:
        self.url = url
        self.module = module
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        command = [
            sys.executable, "-m", "sagaz", "worker", "--url", self.url,
            "--import", self.module, "--no-outbox",
            "--lease-seconds", "1", "--poll-interval", "0.1", "--shutdown-grace", "1",
            "--log-level", "WARNING", *extra,
        ]  # fmt: skip
        environment = {**os.environ, "PYTHONPATH": str(ROOT)}
        process = subprocess.Popen(command, cwd=ROOT, env=environment)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """SIGTERM every running worker; each must exit 0 (graceful shutdown)."""
        running = [process for process in self.processes if process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        for process in running:
            try:
                assert process.wait(timeout=30) == 0, "a worker did not exit cleanly on SIGTERM"
            except subprocess.TimeoutExpired:
                process.kill()
                raise

    def kill_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait()


def wait_until(check: Callable[[], object], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.05)


def scalar(engine: sa.Engine, query: sa.Select[tuple[int]]) -> int:
    with engine.connect() as connection:
        return connection.scalar(query) or 0
