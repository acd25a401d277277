"""Retries with backoff, per-step timeouts and the saga-level timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest

import sagaz._util
import sagaz.policy
from sagaz import (
    MemoryJournal,
    Saga,
    SagaConfig,
    SagaStatus,
    StepStatus,
    TransitionKind,
    action,
    compensate,
)
from sagaz._util import backoff
from sagaz.engine import RunOptions
from sagaz.journal import Transition


def flaky(failures: int) -> tuple[list[int], Any]:
    """A step that raises on its first `failures` calls and then succeeds."""
    calls: list[int] = []

    async def step(ctx: Mapping[str, Any]) -> dict[str, int]:
        calls.append(len(calls) + 1)
        if len(calls) <= failures:
            raise ConnectionError(f"attempt {len(calls)} failed")
        return {"attempts_used": len(calls)}

    return calls, step


async def test_step_failing_twice_then_succeeding_completes_with_two_retries() -> None:
    calls, step = flaky(failures=2)
    journal = MemoryJournal()
    saga = Saga(name="retry-ok").add_step("flaky", step, max_retries=2, retry_backoff=0.001)

    result = await saga.run(journal=journal, saga_id="s1")

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert calls == [1, 2, 3]
    assert result.step("flaky").attempts == 3
    assert result.context == {"attempts_used": 3}
    assert result.errors == []
    assert journal.kinds("s1") == [
        (TransitionKind.SAGA_STARTED, None),
        (TransitionKind.STEP_STARTED, "flaky"),
        (TransitionKind.STEP_ATTEMPT_FAILED, "flaky"),
        (TransitionKind.STEP_STARTED, "flaky"),
        (TransitionKind.STEP_ATTEMPT_FAILED, "flaky"),
        (TransitionKind.STEP_STARTED, "flaky"),
        (TransitionKind.STEP_COMPLETED, "flaky"),
        (TransitionKind.SAGA_FINISHED, None),
    ]
    attempts = [t.attempt for t in journal.transitions if t.kind is TransitionKind.STEP_STARTED]
    assert attempts == [1, 2, 3]
    failed = [t.error for t in journal.transitions if t.kind is TransitionKind.STEP_ATTEMPT_FAILED]
    assert failed == ["ConnectionError: attempt 1 failed", "ConnectionError: attempt 2 failed"]


async def test_step_failing_more_often_than_its_retries_fails_the_saga() -> None:
    calls, step = flaky(failures=2)
    undone: list[str] = []

    async def undo(ctx: Mapping[str, Any]) -> None:
        undone.append("first")

    saga = (
        Saga(name="retry-exhausted")
        .add_step("first", lambda ctx: None, undo)
        .add_step("flaky", step, max_retries=1, retry_backoff=0.001)
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert calls == [1, 2]
    assert result.step("flaky").status is StepStatus.FAILED
    assert result.step("flaky").attempts == 2
    assert result.error == "step 'flaky': ConnectionError: attempt 2 failed"
    assert undone == ["first"]


async def test_retries_wait_with_exponential_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    delays: list[tuple[float, int, float]] = []

    def recording_delay(retry: int, base: float, cap: float) -> float:
        delays.append((base, retry, cap))
        return 0.0

    monkeypatch.setattr(sagaz.policy, "backoff", recording_delay)
    _calls, step = flaky(failures=3)
    saga = Saga(name="retry-backoff").add_step("flaky", step, max_retries=3, retry_backoff=0.25)

    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert delays == [(0.25, 1, 30.0), (0.25, 2, 30.0), (0.25, 3, 30.0)]


def test_backoff_doubles_with_equal_jitter_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # uniform(0, half) picks the bottom, then the top, of each delay's range
    monkeypatch.setattr(sagaz._util.random, "uniform", lambda low, high: low)
    assert [backoff(retry, 1.0, 100.0) for retry in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    monkeypatch.setattr(sagaz._util.random, "uniform", lambda low, high: high)
    assert [backoff(retry, 1.0, 100.0) for retry in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    assert backoff(20, 1.0, 30.0) == 30.0
    assert backoff(0, 1.0, 30.0) == 1.0  # below 1 counts as the first retry
    assert backoff(0, 0.0, 30.0) == 0.0
    assert backoff(10_000, 1.0, 30.0) == 30.0  # no overflow


def test_backoff_jitter_spreads_delays() -> None:
    samples = {backoff(2, 1.0, 100.0) for _ in range(50)}
    assert len(samples) > 1
    assert all(1.0 <= sample <= 2.0 for sample in samples)


async def test_config_defaults_apply_to_steps_that_leave_options_unset() -> None:
    calls, step = flaky(failures=2)
    config = SagaConfig(max_retries=2, retry_backoff=0.001)
    saga = Saga(name="retry-config", config=config).add_step("flaky", step)

    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert calls == [1, 2, 3]


async def test_step_options_override_config_defaults() -> None:
    calls, step = flaky(failures=2)
    config = SagaConfig(max_retries=5, retry_backoff=0.001)
    saga = Saga(name="retry-override", config=config).add_step("flaky", step, max_retries=0)

    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert calls == [1]


async def test_saga_without_config_uses_the_global_config() -> None:
    calls, step = flaky(failures=1)
    sagaz.configure(SagaConfig(max_retries=1, retry_backoff=0.001))
    saga = Saga(name="retry-global").add_step("flaky", step)

    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED
    assert calls == [1, 2]


def test_run_options_resolve_step_policy() -> None:
    options = RunOptions(max_retries=4, retry_backoff=0.2, step_timeout_seconds=9.0)
    saga = Saga(name="retry-policy").add_step(
        "a", lambda ctx: None, max_retries=1, compensation_retries=0
    )
    policy = options.for_step(saga.definition.step("a"))
    assert policy.max_retries == 1
    assert policy.retry_backoff == 0.2
    assert policy.timeout_seconds == 9.0
    assert policy.compensation_retries == 0


# -- timeouts --------------------------------------------------------------------------


async def test_step_timeout_triggers_compensation() -> None:
    undone: list[str] = []
    cancelled = asyncio.Event()

    async def reserve(ctx: Mapping[str, Any]) -> dict[str, str]:
        return {"reservation": "R-1"}

    async def release(ctx: Mapping[str, Any]) -> None:
        undone.append(ctx["reservation"])

    async def hang(ctx: Mapping[str, Any]) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    saga = (
        Saga(name="timeout-step")
        .add_step("reserve", reserve, release)
        .add_step("charge", hang, timeout_seconds=0.05)
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert cancelled.is_set()
    assert result.step("charge").status is StepStatus.FAILED
    assert result.error is not None
    assert "StepTimeoutError" in result.error
    assert "timed out after 0.05s" in result.error
    assert result.step("reserve").status is StepStatus.COMPENSATED
    assert undone == ["R-1"]


async def test_timeout_applies_to_each_attempt() -> None:
    attempts: list[int] = []

    async def slow_then_fast(ctx: Mapping[str, Any]) -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await asyncio.sleep(10)

    saga = Saga(name="timeout-retry").add_step(
        "a", slow_then_fast, timeout_seconds=0.05, max_retries=1, retry_backoff=0.001
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert attempts == [1, 2]


async def test_step_timeout_default_comes_from_config() -> None:
    async def hang(ctx: Mapping[str, Any]) -> None:
        await asyncio.sleep(10)

    saga = Saga(name="timeout-config", config=SagaConfig(step_timeout_seconds=0.05)).add_step(
        "hang", hang
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "StepTimeoutError" in result.error


async def test_a_step_raising_timeout_error_itself_is_not_reported_as_our_timeout() -> None:
    async def client_timeout(ctx: Mapping[str, Any]) -> None:
        raise TimeoutError("upstream read timed out")

    saga = Saga(name="timeout-own").add_step("call", client_timeout, timeout_seconds=5)
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "step 'call': TimeoutError: upstream read timed out"


async def test_saga_timeout_cancels_running_steps_and_compensates() -> None:
    undone: list[str] = []
    cancelled = asyncio.Event()
    never_started: list[str] = []

    class Slow(Saga):
        saga_name = "timeout-saga"
        timeout_seconds = 0.1

        @action("reserve")
        async def reserve(self, ctx: Mapping[str, Any]) -> None: ...

        @compensate("reserve")
        async def release(self, ctx: Mapping[str, Any]) -> None:
            undone.append("reserve")

        @action("wait", depends_on=["reserve"])
        async def wait(self, ctx: Mapping[str, Any]) -> None:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        @action("after", depends_on=["wait"])
        async def after(self, ctx: Mapping[str, Any]) -> None:
            never_started.append("after")

    journal = MemoryJournal()
    result = await Slow().run(journal=journal, saga_id="t1")

    assert result.status is SagaStatus.COMPENSATED
    assert cancelled.is_set()
    assert never_started == []
    assert result.error is not None
    assert "SagaTimeoutError" in result.error
    assert "saga 'timeout-saga' timed out after 0.1s" in result.error
    assert result.step("wait").status is StepStatus.FAILED
    assert result.step("after").status is StepStatus.PENDING
    assert undone == ["reserve"]
    failed = [t for t in journal.transitions if t.kind is TransitionKind.STEP_FAILED]
    assert [t.step for t in failed] == ["wait"]


async def test_saga_timeout_from_constructor_and_from_config() -> None:
    async def hang(ctx: Mapping[str, Any]) -> None:
        await asyncio.sleep(10)

    by_argument = Saga(name="timeout-arg", timeout_seconds=0.05).add_step("hang", hang)
    by_config = Saga(name="timeout-cfg", config=SagaConfig(saga_timeout_seconds=0.05)).add_step(
        "hang", hang
    )
    for saga in (by_argument, by_config):
        result = await saga.run()
        assert result.status is SagaStatus.COMPENSATED
        assert result.error is not None
        assert "SagaTimeoutError" in result.error


class TimingOutJournal(MemoryJournal):
    """A journal whose writes of completed steps time out (e.g. a database timeout)."""

    async def record(self, transition: Transition) -> None:
        if transition.kind is TransitionKind.STEP_COMPLETED:
            raise TimeoutError("journal write timed out")
        await super().record(transition)


async def test_a_journal_timeout_is_raised_not_mistaken_for_a_saga_timeout() -> None:
    saga = Saga(name="timeout-journal").add_step("a", lambda ctx: None)
    with pytest.raises(TimeoutError, match="journal write timed out"):
        await saga.run(journal=TimingOutJournal())


async def test_saga_timeout_during_a_fail_fast_cancellation_loses_no_step() -> None:
    """FAIL_FAST cancels `cleanup`, whose cancellation takes a while (it cleans up); the
    saga timeout expires meanwhile. The run must still wait for the step, record it as
    failed, and only then compensate and finish."""
    journal = MemoryJournal()
    events: list[str] = []

    async def boom(ctx: Mapping[str, Any]) -> None:
        await asyncio.sleep(0.02)
        raise RuntimeError("boom")

    async def cleanup(ctx: Mapping[str, Any]) -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.shield(asyncio.sleep(0.15))
            events.append("cleanup done")
            raise

    async def undo(ctx: Mapping[str, Any]) -> None:
        events.append("undo first")

    saga = (
        Saga(name="timeout-during-cancel", timeout_seconds=0.08)
        .add_step("first", lambda ctx: None, undo)
        .add_step("boom", boom, depends_on=["first"])
        .add_step("cleanup", cleanup, depends_on=["first"])
    )
    result = await saga.run(journal=journal, saga_id="tc")

    assert result.status is SagaStatus.COMPENSATED
    assert events == ["cleanup done", "undo first"]
    assert result.step("cleanup").status is StepStatus.FAILED
    failed = [t.step for t in journal.transitions if t.kind is TransitionKind.STEP_FAILED]
    assert sorted(failed) == ["boom", "cleanup"]
    assert journal.kinds("tc")[-1] == (TransitionKind.SAGA_FINISHED, None)
