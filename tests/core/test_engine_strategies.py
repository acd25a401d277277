"""The three ParallelFailureStrategy values, told apart by what they do to other steps.

The graph (all roots start together)::

    boom     fails as soon as `slow` has started
    slow     runs for a while; `after_slow` depends on it
    after_slow
    doomed   depends on boom (never runs under any strategy)
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from sagaz import (
    MemoryJournal,
    ParallelFailureStrategy,
    Saga,
    SagaConfig,
    SagaResult,
    SagaStatus,
    StepStatus,
    TransitionKind,
)


@dataclass
class Trace:
    events: list[str] = field(default_factory=list)
    slow_started: asyncio.Event = field(default_factory=asyncio.Event)


def build(name: str, trace: Trace, **saga_options: Any) -> Saga:
    async def boom(ctx: Mapping[str, Any]) -> None:
        async with asyncio.timeout(2):
            await trace.slow_started.wait()
        trace.events.append("boom raises")
        raise RuntimeError("boom")

    async def slow(ctx: Mapping[str, Any]) -> dict[str, bool]:
        trace.slow_started.set()
        try:
            await asyncio.sleep(0.1)
        except asyncio.CancelledError:
            trace.events.append("slow cancelled")
            raise
        trace.events.append("slow finished")
        return {"slow": True}

    async def after_slow(ctx: Mapping[str, Any]) -> dict[str, bool]:
        trace.events.append("after_slow ran")
        return {"after_slow": True}

    async def doomed(ctx: Mapping[str, Any]) -> None:
        trace.events.append("doomed ran")

    def undo(step: str) -> Any:
        async def compensation(ctx: Mapping[str, Any]) -> None:
            trace.events.append(f"undo {step}")

        return compensation

    return (
        Saga(name=name, **saga_options)
        .add_step("boom", boom, depends_on=[])
        .add_step("slow", slow, undo("slow"), depends_on=[])
        .add_step("after_slow", after_slow, undo("after_slow"), depends_on=["slow"])
        .add_step("doomed", doomed, depends_on=["boom"])
    )


async def run(strategy: ParallelFailureStrategy) -> tuple[SagaResult, Trace, MemoryJournal]:
    trace = Trace()
    journal = MemoryJournal()
    saga = build(f"strategy-{strategy.value}", trace, failure_strategy=strategy)
    result = await saga.run(journal=journal)
    return result, trace, journal


async def test_fail_fast_cancels_running_siblings_and_starts_nothing_new() -> None:
    result, trace, journal = await run(ParallelFailureStrategy.FAIL_FAST)

    assert result.status is SagaStatus.COMPENSATED
    assert trace.events == ["boom raises", "slow cancelled"]
    assert result.step("slow").status is StepStatus.FAILED
    assert result.step("slow").error == "cancelled: step 'boom' failed (fail fast)"
    assert result.step("after_slow").status is StepStatus.PENDING
    assert result.step("doomed").status is StepStatus.PENDING
    assert result.error == "step 'boom': RuntimeError: boom"
    assert "step 'slow': cancelled: step 'boom' failed (fail fast)" in result.errors
    failed = [t.step for t in journal.transitions if t.kind is TransitionKind.STEP_FAILED]
    assert sorted(failed) == ["boom", "slow"]


async def test_fail_fast_with_grace_lets_running_siblings_finish_but_starts_nothing() -> None:
    result, trace, _journal = await run(ParallelFailureStrategy.FAIL_FAST_WITH_GRACE)

    assert result.status is SagaStatus.COMPENSATED
    assert trace.events == ["boom raises", "slow finished", "undo slow"]
    assert result.step("slow").status is StepStatus.COMPENSATED
    assert result.step("after_slow").status is StepStatus.PENDING
    assert result.step("doomed").status is StepStatus.PENDING
    assert result.errors == ["step 'boom': RuntimeError: boom"]


async def test_wait_all_keeps_starting_steps_that_do_not_depend_on_the_failure() -> None:
    result, trace, _journal = await run(ParallelFailureStrategy.WAIT_ALL)

    assert result.status is SagaStatus.COMPENSATED
    assert trace.events == [
        "boom raises",
        "slow finished",
        "after_slow ran",
        "undo after_slow",
        "undo slow",
    ]
    assert result.step("slow").status is StepStatus.COMPENSATED
    assert result.step("after_slow").status is StepStatus.COMPENSATED
    assert result.step("doomed").status is StepStatus.PENDING, "it depends on the failed step"
    assert result.errors == ["step 'boom': RuntimeError: boom"]


async def test_default_strategy_is_fail_fast() -> None:
    trace = Trace()
    result = await build("strategy-default", trace).run()
    assert result.status is SagaStatus.COMPENSATED
    assert "slow cancelled" in trace.events


async def test_strategy_from_config_and_saga_precedence() -> None:
    trace = Trace()
    config = SagaConfig(failure_strategy=ParallelFailureStrategy.WAIT_ALL)
    await build("strategy-config", trace, config=config).run()
    assert "after_slow ran" in trace.events

    trace = Trace()
    saga = build(
        "strategy-precedence",
        trace,
        config=config,
        failure_strategy=ParallelFailureStrategy.FAIL_FAST,
    )
    await saga.run()
    assert "slow cancelled" in trace.events


@pytest.mark.parametrize("value", ["wait_all", "WAIT_ALL"])
async def test_strategy_given_as_a_string_behaves_like_the_enum(value: str) -> None:
    trace = Trace()
    saga = build(f"strategy-str-{value}", trace, failure_strategy=value)
    assert saga.definition.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    await saga.run()
    assert "after_slow ran" in trace.events


async def test_fail_fast_cancels_a_step_waiting_to_retry() -> None:
    attempts: list[int] = []
    gate = asyncio.Event()

    async def retrying(ctx: Mapping[str, Any]) -> None:
        attempts.append(len(attempts) + 1)
        gate.set()
        raise ConnectionError("try again")

    async def boom(ctx: Mapping[str, Any]) -> None:
        async with asyncio.timeout(2):
            await gate.wait()
        raise RuntimeError("boom")

    saga = (
        Saga(name="strategy-retry-cancel")
        .add_step("retrying", retrying, depends_on=[], max_retries=5, retry_backoff=0.2)
        .add_step("boom", boom, depends_on=[])
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert attempts == [1]
    assert result.step("retrying").status is StepStatus.FAILED


@pytest.mark.parametrize("strategy", list(ParallelFailureStrategy))
@pytest.mark.parametrize(
    "outcomes", [("fail", "fail"), ("fail", "ok"), ("ok", "fail")], ids="-".join
)
async def test_steps_finishing_together_with_a_failure(
    strategy: ParallelFailureStrategy, outcomes: tuple[str, str]
) -> None:
    """Steps that finish in the same event-loop iteration as a failing step (no await in
    between) are all accounted for: none is lost, none crashes the run."""
    undone: list[str] = []

    def step(name: str, outcome: str) -> Any:
        async def run(ctx: Mapping[str, Any]) -> dict[str, bool]:
            if outcome == "fail":
                raise RuntimeError(f"{name} failed")
            return {name: True}

        return run

    def undo(name: str) -> Any:
        async def run(ctx: Mapping[str, Any]) -> None:
            undone.append(name)

        return run

    saga = (
        Saga(name=f"strategy-together-{strategy.value}", failure_strategy=strategy)
        .add_step("a", step("a", outcomes[0]), undo("a"), depends_on=[])
        .add_step("b", step("b", outcomes[1]), undo("b"), depends_on=[])
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    succeeded = [name for name, outcome in zip("ab", outcomes, strict=True) if outcome == "ok"]
    assert undone == succeeded
    for name, outcome in zip("ab", outcomes, strict=True):
        expected = StepStatus.COMPENSATED if outcome == "ok" else StepStatus.FAILED
        assert result.step(name).status is expected
    assert result.errors == [
        f"step '{n}': RuntimeError: {n} failed" for n in "ab" if n not in succeeded
    ]
