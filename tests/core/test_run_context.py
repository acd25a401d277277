"""The lease deadline on the worker's own clock, and `sagaz.current_run()`: a run past its
deadline starts no step, no compensation and no write (checked with a fake clock, on the
memory journal); steps see their saga, attempt, fence and idempotency keys."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import pytest

import sagaz
from sagaz import (
    LeaseLostError,
    MemoryJournal,
    Saga,
    StepRun,
    Transition,
    TransitionKind,
    action,
    compensate,
)
from sagaz.engine import SagaEngine
from sagaz.run_context import LeaseClock


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_deadline_is_the_request_start_plus_the_lease_minus_the_margin() -> None:
    clock = FakeClock()
    lease = LeaseClock(10.0, 1.0, started_at=100.0, clock=clock)
    clock.now = 108.99
    assert lease.held()
    clock.now = 109.0  # 100 + 10 - 1: the margin is gone too
    assert not lease.held()
    with pytest.raises(LeaseLostError, match="deadline passed"):
        lease.check("s-1", "step 'x'")
    lease.granted(105.0)  # a renewal sent at 105 answered (late): deadline 114
    assert lease.held()
    lease.granted(101.0)  # an older renewal answering later never moves it back
    assert lease.deadline == 114.0
    lease.lost()  # a renewal found another owner
    assert not lease.held()
    with pytest.raises(ValueError, match="margin"):
        LeaseClock(1.0, 1.0, started_at=0.0)


async def test_a_run_past_its_deadline_starts_nothing_more_and_writes_nothing() -> None:
    clock = FakeClock()
    lease = LeaseClock(10.0, 1.0, started_at=clock.now, clock=clock)
    calls: list[str] = []

    class Stalled(Saga):
        saga_name = "run-context-stalled"

        @action("first")
        def first(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
            calls.append("first")
            clock.now += 30  # the process was paused in the middle of the step
            held = sagaz.current_run().lease_held()
            calls.append(f"held={held}")
            return {"first": True}

        @compensate("first")
        def undo_first(self, ctx: Mapping[str, Any]) -> None:
            calls.append("undo first")

        @action("second", depends_on=["first"])
        def second(self, ctx: Mapping[str, Any]) -> None:
            calls.append("second")

    journal = MemoryJournal()
    fence = journal.lease("s-1", "worker-a")
    with pytest.raises(LeaseLostError, match="writing step_completed not started"):
        await SagaEngine(journal).run(
            Stalled().definition, {}, saga_id="s-1", fence=fence, lease=lease
        )
    assert calls == ["first", "held=False"]  # no second step, no compensation
    assert journal.kinds("s-1") == [
        (TransitionKind.SAGA_STARTED, None),
        (TransitionKind.STEP_STARTED, "first"),
    ]


async def test_a_transactional_commit_and_a_compensation_are_refused_past_the_deadline() -> None:
    clock = FakeClock()
    lease = LeaseClock(10.0, 1.0, started_at=clock.now, clock=clock)
    journal = MemoryJournal()
    fence = journal.lease("s-2", "worker-a")

    class Compensating(Saga):
        saga_name = "run-context-compensating"

        @action("first")
        def first(self, ctx: Mapping[str, Any]) -> None:
            return None

        @compensate("first")
        def undo_first(self, ctx: Mapping[str, Any]) -> None:
            raise AssertionError("a compensation ran past the deadline")

        @action("second", depends_on=["first"])
        def second(self, ctx: Mapping[str, Any]) -> None:
            clock.now += 30
            raise RuntimeError("second failed while the process was paused")

    # The failure of `second` is not even recorded: the deadline passed first.
    with pytest.raises(LeaseLostError, match="writing step_failed"):
        await SagaEngine(journal).run(
            Compensating().definition, {}, saga_id="s-2", fence=fence, lease=lease
        )
    kinds = journal.kinds("s-2")
    assert (TransitionKind.COMPENSATION_STARTED, "first") not in kinds
    assert kinds[-1] == (TransitionKind.STEP_STARTED, "second")


class StallingJournal(MemoryJournal):
    """A memory journal whose writes of `stall_on` transitions take 30 s on `clock`: the
    process paused (or the database was slow) between the write and the call."""

    def __init__(self, clock: FakeClock, stall_on: set[TransitionKind]) -> None:
        super().__init__()
        self.clock = clock
        self.stall_on = stall_on

    async def record(self, transition: Transition) -> None:
        await super().record(transition)
        if transition.kind in self.stall_on:
            self.clock.now += 30


@pytest.mark.parametrize(
    ("stall_on", "what"),
    [
        (TransitionKind.STEP_STARTED, "step 'first' not started"),
        (TransitionKind.COMPENSATION_STARTED, "compensation of step 'first' not started"),
    ],
)
async def test_a_deadline_passed_after_the_started_record_calls_nothing(
    stall_on: TransitionKind, what: str
) -> None:
    """The deadline is checked again right before the step (or compensation) is called,
    not only before the write that announced it."""
    clock = FakeClock()
    lease = LeaseClock(10.0, 1.0, started_at=clock.now, clock=clock)
    called: list[str] = []

    class Announced(Saga):
        saga_name = f"run-context-announced-{stall_on.value}"

        @action("first")
        def first(self, ctx: Mapping[str, Any]) -> None:
            called.append("first")

        @compensate("first")
        def undo_first(self, ctx: Mapping[str, Any]) -> None:
            called.append("undo first")

        @action("second", depends_on=["first"])
        def second(self, ctx: Mapping[str, Any]) -> None:
            raise RuntimeError("second fails: first is compensated")

    journal = StallingJournal(clock, {stall_on})
    fence = journal.lease("s-5", "worker-a")
    with pytest.raises(LeaseLostError, match=what):
        await SagaEngine(journal).run(
            Announced().definition, {}, saga_id="s-5", fence=fence, lease=lease
        )
    assert called == ([] if stall_on is TransitionKind.STEP_STARTED else ["first"])


async def test_current_run_tells_a_step_its_saga_attempt_fence_and_keys() -> None:
    seen: list[StepRun] = []
    threads: list[str] = []

    class Keys(Saga):
        saga_name = "run-context-keys"

        @action("flaky", max_retries=1, retry_backoff=0.0)
        async def flaky(self, ctx: Mapping[str, Any]) -> None:
            seen.append(sagaz.current_run())
            if len(seen) == 1:
                raise RuntimeError("first attempt fails")

        @action("plain", depends_on=["flaky"])
        def plain(self, ctx: Mapping[str, Any]) -> None:
            threads.append(threading.current_thread().name)
            seen.append(sagaz.current_run())
            raise RuntimeError("fail, to compensate flaky")

        @compensate("flaky")
        async def undo(self, ctx: Mapping[str, Any]) -> None:
            seen.append(sagaz.current_run())

    journal = MemoryJournal()
    fence = journal.lease("s-3", "worker-a")
    fence = journal.lease("s-3", "worker-b")  # the second claim: token 2
    await SagaEngine(journal).run(Keys().definition, {}, saga_id="s-3", fence=fence)
    first, second, plain, undo = seen
    assert plain.step == "plain"
    assert threads != [threading.current_thread().name]  # the plain step ran in a thread
    assert (first.saga_id, first.saga_name, first.step) == ("s-3", "run-context-keys", "flaky")
    assert [r.attempt for r in seen] == [1, 2, 1, 1]
    assert {r.fence for r in seen} == {2}
    assert first.step_key == second.step_key == "s-3:flaky"
    assert undo.step_key == "s-3:flaky:undo"
    assert undo.compensating
    keys = {r.idempotency_key for r in seen}
    assert len(keys) == 4  # one per attempt
    assert all(r.lease_held() for r in seen)  # no lease: always held
    with pytest.raises(LookupError, match="inside a running step"):
        sagaz.current_run()


async def test_a_saga_run_without_a_worker_has_fence_zero() -> None:
    seen: list[StepRun] = []

    class Local(Saga):
        saga_name = "run-context-local"

        @action("only")
        def only(self, ctx: Mapping[str, Any]) -> None:
            seen.append(sagaz.current_run())

    await Local().run({})
    assert seen[0].fence == 0
    seen[0].ensure_lease()  # no lease: never raises
