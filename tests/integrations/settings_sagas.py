"""A saga whose one step fails a given number of times before it succeeds: run by the
worker commands of the adapters, it shows whether the app's retry settings reached the
worker (with the default max_retries=0 the first failure is final)."""

from __future__ import annotations

from typing import Any

from sagaz import Saga, action, compensate

_FAILURES: dict[str, int] = {}


class FlakySaga(Saga):
    saga_name = "settings-flaky"

    @action("flaky")
    async def flaky(self, ctx: dict[str, Any]) -> dict[str, Any]:
        seen = _FAILURES.get(ctx["key"], 0)
        if seen < ctx["fail_times"]:
            _FAILURES[ctx["key"]] = seen + 1
            raise RuntimeError(f"failure {seen + 1} of {ctx['fail_times']}")
        return {"failed_before": seen}

    @compensate("flaky")
    async def undo(self, ctx: dict[str, Any]) -> None:
        return None
