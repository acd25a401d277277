"""Fixtures of the CLI tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import pytest


@pytest.fixture
def worker_process() -> Iterator[list[subprocess.Popen[str]]]:
    """Subprocesses a test starts (append them): every one still running is killed after."""
    processes: list[subprocess.Popen[str]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait()
