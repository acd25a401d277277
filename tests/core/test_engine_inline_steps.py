"""A lone ready step runs inline (no task): a saga timeout that interrupts it must still
record it as failed, exactly as for steps run as tasks."""

from __future__ import annotations

import asyncio
from typing import Any

from sagaz import MemoryJournal, Saga, SagaStatus, StepStatus, TransitionKind


async def test_saga_timeout_interrupting_an_inline_step_records_it_failed() -> None:
    undone: list[str] = []

    async def first(ctx: Any) -> None:
        return None

    async def undo_first(ctx: Any) -> None:
        undone.append("first")

    async def hang(ctx: Any) -> None:
        await asyncio.sleep(10)

    journal = MemoryJournal()
    saga = (
        Saga(name="inline-timeout", timeout_seconds=0.1)
        .add_step("first", first, undo_first)
        .add_step("hang", hang)
    )
    result = await saga.run({}, journal=journal)
    assert result.status is SagaStatus.COMPENSATED
    assert result.steps["hang"].status is StepStatus.FAILED
    assert "SagaTimeoutError" in (result.steps["hang"].error or "")
    assert undone == ["first"]
    kinds = journal.kinds(result.saga_id)
    assert (TransitionKind.STEP_FAILED, "hang") in kinds
    stored = await journal.load(result.saga_id)
    assert stored is not None
    assert stored.steps["hang"].status is StepStatus.FAILED
