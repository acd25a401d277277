"""A failure and a sibling's success that land in the same scheduler wake-up (FAIL_FAST)."""

from __future__ import annotations

from typing import Any

from sagaz import MemoryJournal, ParallelFailureStrategy, Saga, SagaStatus, StepStatus


async def test_fail_fast_with_a_sibling_finishing_at_the_same_time() -> None:
    undone: list[str] = []

    async def fails(ctx: Any) -> None:
        raise RuntimeError("boom")

    async def succeeds(ctx: Any) -> dict[str, Any]:
        return {"ok": True}

    async def undo(ctx: Any) -> None:
        undone.append("succeeds")

    saga = (
        Saga(name="simultaneous", failure_strategy=ParallelFailureStrategy.FAIL_FAST)
        .add_step("fails", fails, depends_on=[])
        .add_step("succeeds", succeeds, undo, depends_on=[])
    )
    result = await saga.run({}, journal=MemoryJournal())
    assert result.status is SagaStatus.COMPENSATED
    assert result.steps["fails"].status is StepStatus.FAILED
    assert result.steps["succeeds"].status is StepStatus.COMPENSATED
    assert undone == ["succeeds"]
