"""Fixtures of the CLI tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pytest

#: Start `sagaz worker` on tests/cli/sagas_for_cli.py: (cwd, environment, *options).
StartWorker = Callable[..., subprocess.Popen[str]]


@pytest.fixture
def start_worker() -> Iterator[StartWorker]:
    """Starts `sagaz worker --import tests.cli.sagas_for_cli --poll-interval 0.1
    --shutdown-grace 1 *options` in `cwd` with `environment` (stderr piped); every one
    still running is killed after the test."""
    processes: list[subprocess.Popen[str]] = []

    def start(cwd: Path, environment: Mapping[str, str], *options: str) -> subprocess.Popen[str]:
        command = [
            sys.executable, "-m", "sagaz", "worker", "--import", "tests.cli.sagas_for_cli",
            "--poll-interval", "0.1", "--shutdown-grace", "1", *options,
        ]  # fmt: skip
        process = subprocess.Popen(
            command, cwd=cwd, env=dict(environment), stderr=subprocess.PIPE, text=True
        )
        processes.append(process)
        return process

    yield start
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
