"""Run a framework's worker command as a process until a saga is done, then stop it."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import sqlalchemy as sa

from sagaz.store.schema import saga_steps, sagas
from tests.integrations.integration_helpers import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
FINISHED = frozenset({"completed", "compensated", "failed"})


def clean_environment(extra: Mapping[str, str]) -> dict[str, str]:
    """os.environ without any SAGAZ_* variable (the settings must come from the app),
    with the repository on the path, plus `extra`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("SAGAZ_")}
    env["PYTHONPATH"] = os.pathsep.join(
        [
            str(ROOT),
            *filter(None, [env.get("PYTHONPATH")]),
            *extra.get("PYTHONPATH", "").split(os.pathsep),
        ]
    ).rstrip(os.pathsep)
    env.update({key: value for key, value in extra.items() if key != "PYTHONPATH"})
    return env


def wait_for(check: Callable[[], bool], seconds: float = 60.0) -> None:
    """Poll `check` until it holds (TimeoutError after `seconds`)."""
    wait_until_sync(check, seconds)


def saga_outcome(engine: sa.Engine, saga_id: str) -> tuple[str, int | None]:
    """The saga's status and the attempts of its step ``flaky``."""
    with engine.connect() as connection:
        status = connection.scalar(sa.select(sagas.c.status).where(sagas.c.id == saga_id))
        attempts = connection.scalar(
            sa.select(saga_steps.c.attempts).where(
                saga_steps.c.saga_id == saga_id, saga_steps.c.name == "flaky"
            )
        )
    return str(status), attempts


def run_until_done(
    argv: Sequence[str], *, cwd: Path, env: Mapping[str, str], engine: sa.Engine, saga_id: str
) -> tuple[str, int | None]:
    """Run the worker command until the saga finished; SIGTERM it and
    return the saga's outcome. The process must exit 0."""
    process = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=dict(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        try:
            wait_for(
                lambda: process.poll() is not None or saga_outcome(engine, saga_id)[0] in FINISHED
            )
        except TimeoutError:
            process.kill()
            raise AssertionError(process.communicate(timeout=30)[0]) from None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=60)
        assert process.returncode == 0, output
        return saga_outcome(engine, saga_id)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
