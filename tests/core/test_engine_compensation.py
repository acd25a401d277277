"""Compensation: reverse-topological order, retries, failures that need a human, and
plain `def` steps whose thread outlives a timeout or a cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from sagaz import (
    MemoryJournal,
    ParallelFailureStrategy,
    Saga,
    SagaStatus,
    StepStatus,
    TransitionKind,
)

DIAMOND_EDGES = [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d"), ("d", "e")]
"""(dependency, dependent): a -> b, a -> c, b -> d, c -> d, and d -> e (which fails)."""


def diamond(
    name: str,
    events: list[str],
    *,
    failing_compensation: str | None = None,
    compensation_retries: int = 0,
) -> Saga:
    """a; b and c after a; d after b and c; e after d fails. Every step has a
    compensation that records when it starts and ends (and yields in between, so that
    concurrent compensations interleave if the engine lets them)."""

    def forward(step: str) -> Any:
        async def run(ctx: Mapping[str, Any]) -> dict[str, str]:
            await asyncio.sleep(0)
            return {step: "done"}

        return run

    def compensation(step: str) -> Any:
        async def undo(ctx: Mapping[str, Any]) -> None:
            events.append(f"start {step}")
            await asyncio.sleep(0.01)
            if step == failing_compensation:
                events.append(f"fail {step}")
                raise RuntimeError(f"cannot undo {step}")
            events.append(f"end {step}")

        return undo

    async def explode(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("e failed")

    saga = Saga(name=name)
    for step in "abcd":
        deps = [dep for dep, dependent in DIAMOND_EDGES if dependent == step]
        saga.add_step(
            step,
            forward(step),
            compensation(step),
            depends_on=deps,
            compensation_retries=compensation_retries,
            retry_backoff=0.001,
        )
    saga.add_step("e", explode, depends_on=["d"])
    return saga


async def test_diamond_is_compensated_in_reverse_topological_order() -> None:
    events: list[str] = []
    result = await diamond("comp-diamond", events).run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "step 'e': RuntimeError: e failed"
    for step in "abcd":
        assert result.step(step).status is StepStatus.COMPENSATED
    assert result.step("e").status is StepStatus.FAILED
    assert sorted(e for e in events if e.startswith("end")) == ["end a", "end b", "end c", "end d"]
    # every compensation finished before the compensation of anything it depends on began
    for dependency, dependent in DIAMOND_EDGES[:-1]:
        assert events.index(f"end {dependent}") < events.index(f"start {dependency}"), events
    assert events[0] == "start d"
    assert events[-1] == "end a"


async def test_diamond_siblings_are_compensated_concurrently() -> None:
    events: list[str] = []
    await diamond("comp-diamond-siblings", events).run()
    middle = events[2:6]
    assert middle[:2] == ["start b", "start c"], events


async def test_compensation_order_in_the_journal() -> None:
    journal = MemoryJournal()
    await diamond("comp-diamond-journal", []).run(journal=journal, saga_id="d1")
    kinds = journal.kinds("d1")
    compensating = kinds.index((TransitionKind.SAGA_COMPENSATING, None))
    assert kinds[compensating - 1] == (TransitionKind.STEP_FAILED, "e")
    done = [step for kind, step in kinds if kind is TransitionKind.COMPENSATION_COMPLETED]
    assert done[0] == "d"
    assert set(done[1:3]) == {"b", "c"}
    assert done[3] == "a"
    assert kinds[-1] == (TransitionKind.SAGA_FINISHED, None)
    assert journal.transitions[-1].status is SagaStatus.COMPENSATED


async def test_a_compensation_that_keeps_failing_leaves_the_saga_failed() -> None:
    events: list[str] = []
    journal = MemoryJournal()
    saga = diamond("comp-stuck", events, failing_compensation="d", compensation_retries=2)

    result = await saga.run(journal=journal, saga_id="stuck")

    assert result.status is SagaStatus.FAILED
    assert events == ["start d", "fail d"] * 3, "one attempt and two retries"
    d = result.step("d")
    assert d.status is StepStatus.COMPENSATION_FAILED
    assert d.compensation_error == "RuntimeError: cannot undo d"
    for step in "abc":
        outcome = result.step(step)
        assert outcome.status is StepStatus.COMPLETED, f"{step} depends on d: left alone"
        assert outcome.compensation_error is not None
        assert "not compensated" in outcome.compensation_error
    assert result.error == "step 'e': RuntimeError: e failed"
    assert result.errors[0] == "step 'e': RuntimeError: e failed"
    assert result.errors[1] == "compensation of step 'd': RuntimeError: cannot undo d"
    assert sorted(result.errors[2:]) == [
        f"step '{step}': not compensated: a step that depends on it could not be compensated"
        for step in "abc"
    ]
    assert journal.transitions[-1].kind is TransitionKind.SAGA_FINISHED
    assert journal.transitions[-1].status is SagaStatus.FAILED
    comp_kinds = [
        (kind, step)
        for kind, step in journal.kinds("stuck")
        if kind.value.startswith("compensation")
    ]
    assert comp_kinds == [
        (TransitionKind.COMPENSATION_STARTED, "d"),
        (TransitionKind.COMPENSATION_FAILED, "d"),
    ]


async def test_unrelated_steps_are_still_compensated_when_one_compensation_fails() -> None:
    undone: list[str] = []

    async def undo(step: str, ctx: Mapping[str, Any]) -> None:
        if step == "left":
            raise RuntimeError("left stuck")
        undone.append(step)

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = (
        Saga(name="comp-unrelated")
        .add_step("root", lambda ctx: None, _partial(undo, "root"), depends_on=[])
        .add_step("left", lambda ctx: None, _partial(undo, "left"), compensation_retries=0)
        .add_step("right", lambda ctx: None, _partial(undo, "right"), depends_on=[])
        .add_step("boom", boom, depends_on=["left", "right"])
    )
    result = await saga.run()

    assert result.status is SagaStatus.FAILED
    assert undone == ["right"]
    assert result.step("right").status is StepStatus.COMPENSATED
    assert result.step("left").status is StepStatus.COMPENSATION_FAILED
    assert result.step("root").status is StepStatus.COMPLETED


def _partial(function: Any, step: str) -> Any:
    async def call(ctx: Mapping[str, Any]) -> None:
        await function(step, ctx)

    return call


async def test_compensations_are_retried_until_they_succeed() -> None:
    calls: list[int] = []

    async def flaky_undo(ctx: Mapping[str, Any]) -> None:
        calls.append(len(calls) + 1)
        if len(calls) < 3:
            raise ConnectionError("not yet")

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = (
        Saga(name="comp-retry")
        .add_step("a", lambda ctx: None, flaky_undo, compensation_retries=2, retry_backoff=0.001)
        .add_step("b", boom)
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert calls == [1, 2, 3]
    assert result.step("a").status is StepStatus.COMPENSATED
    assert result.errors == ["step 'b': RuntimeError: boom"]


async def test_compensation_sees_the_context_including_results() -> None:
    seen: list[dict[str, Any]] = []

    async def undo(ctx: Mapping[str, Any]) -> None:
        seen.append(dict(ctx))

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = (
        Saga(name="comp-context")
        .add_step("reserve", lambda ctx: {"reservation": "R-9"}, undo)
        .add_step("charge", boom)
    )
    result = await saga.run({"order_id": 9})
    assert seen == [{"order_id": 9, "reservation": "R-9"}]
    assert result.context == {"order_id": 9, "reservation": "R-9"}


async def test_steps_without_compensation_and_failed_steps_are_not_undone() -> None:
    undone: list[str] = []
    journal = MemoryJournal()

    async def undo(ctx: Mapping[str, Any]) -> None:
        undone.append("with_undo")

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    async def undo_boom(ctx: Mapping[str, Any]) -> None:
        undone.append("boom")

    saga = (
        Saga(name="comp-partial")
        .add_step("with_undo", lambda ctx: None, undo)
        .add_step("without_undo", lambda ctx: None)
        .add_step("boom", boom, undo_boom)
    )
    result = await saga.run(journal=journal, saga_id="p1")

    assert result.status is SagaStatus.COMPENSATED
    assert undone == ["with_undo"], "a step whose action failed is not compensated"
    assert result.step("without_undo").status is StepStatus.COMPENSATED
    assert result.step("boom").status is StepStatus.FAILED
    assert (TransitionKind.COMPENSATION_COMPLETED, "without_undo") in journal.kinds("p1")


async def test_sync_compensation_runs_in_a_thread() -> None:
    threads: list[bool] = []

    def undo(ctx: Mapping[str, Any]) -> None:
        threads.append(threading.current_thread() is threading.main_thread())

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    result = (
        await Saga(name="comp-sync").add_step("a", lambda ctx: None, undo).add_step("b", boom).run()
    )
    assert result.status is SagaStatus.COMPENSATED
    assert threads == [False]


# -- plain def steps whose thread cannot be interrupted ---------------------------------


class ThreadStep:
    """A plain def step that blocks its thread until released, then returns or raises."""

    def __init__(self, *, fail: bool = False, hold: float = 0.2) -> None:
        self.fail = fail
        self.hold = hold
        self.events: list[str] = []
        self.started = threading.Event()

    def __call__(self, ctx: Mapping[str, Any]) -> dict[str, bool]:
        self.started.set()
        time.sleep(self.hold)
        self.events.append("thread returned")
        if self.fail:
            raise RuntimeError("thread failed late")
        return {"late": True}

    def undo(self, name: str) -> Any:
        async def compensation(ctx: Mapping[str, Any]) -> None:
            self.events.append(f"undo {name}")

        return compensation


async def test_timed_out_thread_step_is_compensated_only_after_its_thread_returns() -> None:
    step = ThreadStep()
    result = await (
        Saga(name="comp-thread-timeout")
        .add_step("first", lambda ctx: None, step.undo("first"))
        .add_step("blocking", step, step.undo("blocking"), timeout_seconds=0.05)
        .run()
    )

    assert result.status is SagaStatus.COMPENSATED
    error = result.step("blocking").error
    assert error is not None
    assert "StepTimeoutError" in error
    # the thread returned successfully after the timeout: its step is undone too, and
    # nothing is undone before the thread returned
    assert step.events == ["thread returned", "undo blocking", "undo first"]
    assert result.step("blocking").status is StepStatus.COMPENSATED
    assert "late" not in result.context, "a late result is not merged"


async def test_timed_out_thread_step_that_fails_late_is_not_compensated() -> None:
    step = ThreadStep(fail=True)
    result = await (
        Saga(name="comp-thread-late-failure")
        .add_step("first", lambda ctx: None, step.undo("first"))
        .add_step("blocking", step, step.undo("blocking"), timeout_seconds=0.05)
        .run()
    )

    assert result.status is SagaStatus.COMPENSATED
    assert step.events == ["thread returned", "undo first"]
    assert result.step("blocking").status is StepStatus.FAILED


async def test_thread_step_cancelled_by_fail_fast_is_compensated_after_it_returns() -> None:
    step = ThreadStep(hold=0.15)

    async def boom(ctx: Mapping[str, Any]) -> None:
        assert await asyncio.to_thread(step.started.wait, 2)
        raise RuntimeError("boom")

    saga = (
        Saga(name="comp-thread-fail-fast", failure_strategy=ParallelFailureStrategy.FAIL_FAST)
        .add_step("blocking", step, step.undo("blocking"), depends_on=[])
        .add_step("boom", boom, depends_on=[])
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert step.events == ["thread returned", "undo blocking"]
    assert result.step("blocking").status is StepStatus.COMPENSATED
    assert result.errors[0] == "step 'boom': RuntimeError: boom"


async def test_thread_step_cut_by_the_saga_timeout_is_compensated_after_it_returns() -> None:
    step = ThreadStep(hold=0.2)
    saga = Saga(name="comp-thread-saga-timeout", timeout_seconds=0.05).add_step(
        "blocking", step, step.undo("blocking")
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "SagaTimeoutError" in result.error
    assert step.events == ["thread returned", "undo blocking"]


@pytest.mark.parametrize("late_attempt_fails", [False, True])
async def test_every_timed_out_attempt_of_a_thread_step_is_awaited(
    late_attempt_fails: bool,
) -> None:
    """Two attempts time out; the first thread returns successfully, the second fails.

    The step's effects exist (from attempt 1), so it must be compensated, whatever the
    last attempt did.
    """
    events: list[str] = []
    attempts: list[int] = []

    def blocking(ctx: Mapping[str, Any]) -> None:
        attempts.append(len(attempts) + 1)
        attempt = len(attempts)
        time.sleep(0.15 if attempt == 1 else 0.25)
        events.append(f"attempt {attempt} returned")
        if attempt == 2 and late_attempt_fails:
            raise RuntimeError("attempt 2 failed late")

    async def undo(ctx: Mapping[str, Any]) -> None:
        events.append("undo")

    saga = Saga(name=f"comp-thread-retries-{late_attempt_fails}").add_step(
        "blocking", blocking, undo, timeout_seconds=0.05, max_retries=1, retry_backoff=0.001
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert attempts == [1, 2]
    assert events == ["attempt 1 returned", "attempt 2 returned", "undo"]
