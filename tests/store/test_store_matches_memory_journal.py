"""The SQL store merges step rows in SQL; the in-memory journal applies the pure state
machine. For the same runs, both must end in the same state."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz import MemoryJournal, Saga, action, compensate
from sagaz.engine import RunOptions, SagaEngine
from sagaz.journal import SagaSnapshot
from sagaz.store.stores import AsyncSagaStore

attempts: dict[str, int] = {}


class Mixed(Saga):
    saga_name = "store-vs-memory"

    @action("flaky", max_retries=2, retry_backoff=0)
    async def flaky(self, ctx: Any) -> dict[str, Any]:
        key = f"{ctx['run']}-flaky"
        attempts[key] = attempts.get(key, 0) + 1
        if attempts[key] <= ctx["flaky_failures"]:
            raise RuntimeError(f"flaky attempt {attempts[key]}")
        return {"flaky": attempts[key]}

    @compensate("flaky")
    async def undo_flaky(self, ctx: Any) -> None:
        if ctx.get("undo_fails"):
            raise RuntimeError("cannot undo flaky")

    @action("side", max_retries=0)
    async def side(self, ctx: Any) -> dict[str, Any]:
        return {"side": True}

    @compensate("side")
    async def undo_side(self, ctx: Any) -> None:
        return None

    @action("last", depends_on=["flaky", "side"])
    async def last(self, ctx: Any) -> dict[str, Any]:
        if ctx.get("last_fails"):
            raise RuntimeError("last failed")
        return {"last": True}


def comparable(snapshot: SagaSnapshot | None) -> dict[str, Any]:
    assert snapshot is not None
    return {
        "status": snapshot.status,
        "context": snapshot.context,
        "error": snapshot.error,
        "steps": {
            name: (
                step.status,
                step.attempts,
                step.result,
                step.error,
                step.finished_at is not None,
            )
            for name, step in sorted(snapshot.steps.items())
        },
    }


@pytest.mark.parametrize(
    "case",
    [
        {"flaky_failures": 0},
        {"flaky_failures": 2},
        {"flaky_failures": 3},
        {"flaky_failures": 1, "last_fails": True},
        {"flaky_failures": 0, "last_fails": True, "undo_fails": True},
    ],
)
async def test_sql_store_ends_in_the_same_state_as_the_memory_journal(
    async_engine: AsyncEngine, case: dict[str, Any]
) -> None:
    options = RunOptions(compensation_retries=1, retry_backoff=0)
    memory = MemoryJournal()
    store = AsyncSagaStore(async_engine)
    attempts.clear()
    await SagaEngine(memory, options).run(
        Mixed().definition,
        {"run": "memory", **case},
        saga_id="10000000-0000-4000-8000-000000000001",
    )
    await SagaEngine(store, options).run(
        Mixed().definition, {"run": "sql", **case}, saga_id="10000000-0000-4000-8000-000000000001"
    )
    expected = comparable(await memory.load("10000000-0000-4000-8000-000000000001"))
    actual = comparable(await store.load("10000000-0000-4000-8000-000000000001"))
    expected["context"].pop("run")
    actual["context"].pop("run")
    assert actual == expected
