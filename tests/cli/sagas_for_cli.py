"""A saga `sagaz worker` subprocesses run in the CLI tests (`--import tests.cli.sagas_for_cli`).

Its step fails `ctx["failures"]` times, counting attempts in the file `ctx["counter"]`
(which survives the retries and is readable by the test), then succeeds. It leaves
`max_retries` unset, so the worker's SagaConfig decides how often it is retried.
`GatedSaga` waits for a file between its start and its result (see its docstring).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sagaz import Saga, action


class FlakySaga(Saga):
    saga_name = "cli-flaky"

    @action("flaky")
    def flaky(self, ctx: Any) -> dict[str, Any]:
        counter = Path(ctx["counter"])
        attempt = (int(counter.read_text()) if counter.exists() else 0) + 1
        counter.write_text(str(attempt))
        if attempt <= ctx["failures"]:
            raise RuntimeError(f"flaky failure {attempt} of {ctx['failures']}")
        return {"attempts": attempt}


class GatedSaga(Saga):
    """Its step touches the file `ctx["entered"]`, waits until the file `ctx["gate"]`
    exists (the test cuts the database connection in between), then returns the
    context's marker: the write of its result is the statement that fails."""

    saga_name = "cli-gated"

    @action("echo")
    def echo(self, ctx: Any) -> dict[str, Any]:  # sync: it runs in a thread
        Path(ctx["entered"]).touch()
        while not Path(ctx["gate"]).exists():
            time.sleep(0.02)
        return {"echo": ctx["marker"]}
