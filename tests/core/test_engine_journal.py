"""The journal seen from the engine: every transition recorded, resume from a snapshot,
fencing, and listeners."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from sagaz import (
    LeaseLostError,
    MemoryJournal,
    Saga,
    SagaConfig,
    SagaJournal,
    SagaStatus,
    StepOutcome,
    StepStatus,
    Transition,
    TransitionKind,
)
from sagaz.engine import SagaEngine
from sagaz.journal import Fence, SagaSnapshot, apply_transition

K = TransitionKind


def transition(
    kind: TransitionKind, saga_id: str, step: str | None = None, **fields: Any
) -> Transition:
    return Transition(
        kind=kind,
        saga_id=saga_id,
        saga_name="journal-saga",
        at=datetime.now(UTC),
        step=step,
        **fields,
    )


class Counter:
    """Step functions that count their calls."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}

    def step(self, name: str, result: Mapping[str, Any] | None = None) -> Any:
        async def run(ctx: Mapping[str, Any]) -> Mapping[str, Any] | None:
            self.calls[name] = self.calls.get(name, 0) + 1
            return result

        return run


async def test_every_transition_of_a_compensated_run_is_recorded_in_order() -> None:
    journal = MemoryJournal()

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    async def undo(ctx: Mapping[str, Any]) -> None: ...

    saga = Saga(name="journal-all").add_step("a", lambda ctx: {"x": 1}, undo).add_step("b", boom)
    result = await saga.run({"in": True}, journal=journal, saga_id="j1")

    assert journal.kinds("j1") == [
        (K.SAGA_STARTED, None),
        (K.STEP_STARTED, "a"),
        (K.STEP_COMPLETED, "a"),
        (K.STEP_STARTED, "b"),
        (K.STEP_FAILED, "b"),
        (K.SAGA_COMPENSATING, None),
        (K.COMPENSATION_STARTED, "a"),
        (K.COMPENSATION_COMPLETED, "a"),
        (K.SAGA_FINISHED, None),
    ]
    started, *_, finished = journal.transitions
    assert started.status is SagaStatus.RUNNING
    assert started.context == {"in": True}
    assert journal.transitions[2].result == {"x": 1}
    assert journal.transitions[4].error == "RuntimeError: boom"
    assert journal.transitions[5].status is SagaStatus.COMPENSATING
    assert finished.status is SagaStatus.COMPENSATED
    assert finished.context == {"in": True, "x": 1}
    assert finished.error == "step 'b': RuntimeError: boom"
    assert {t.saga_name for t in journal.transitions} == {"journal-all"}
    assert all(t.fence is None for t in journal.transitions)

    snapshot = await journal.load("j1")
    assert snapshot is not None
    assert snapshot.status is SagaStatus.COMPENSATED
    assert snapshot.context == result.context
    assert snapshot.steps["a"].status is StepStatus.COMPENSATED
    assert snapshot.steps["a"].result == {"x": 1}
    assert snapshot.steps["b"].status is StepStatus.FAILED
    assert snapshot.steps["b"].error == "RuntimeError: boom"
    assert snapshot.error == "step 'b': RuntimeError: boom"


async def test_resume_does_not_re_execute_completed_steps() -> None:
    journal = MemoryJournal()
    counter = Counter()
    for t in (
        transition(K.SAGA_STARTED, "r1", status=SagaStatus.RUNNING, context={"order": 1}),
        transition(K.STEP_STARTED, "r1", "a", attempt=1),
        transition(K.STEP_COMPLETED, "r1", "a", attempt=1, result={"from_journal": "a"}),
        transition(K.STEP_STARTED, "r1", "b", attempt=1),
    ):
        await journal.record(t)
    seen: list[dict[str, Any]] = []

    async def b(ctx: Mapping[str, Any]) -> dict[str, str]:
        seen.append(dict(ctx))
        return {"b": "ran"}

    saga = (
        Saga(name="journal-saga")
        .add_step("a", counter.step("a", {"from_journal": "re-executed!"}))
        .add_step("b", b)
    )
    result = await saga.run({"ignored": True}, journal=journal, saga_id="r1")

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert counter.calls == {}, "the completed step was not run again"
    assert seen == [{"order": 1, "from_journal": "a"}]
    assert result.context == {"order": 1, "from_journal": "a", "b": "ran"}
    assert result.step("a").result == {"from_journal": "a"}
    assert result.step("b").attempts == 2, "attempt numbering continues across runs"
    resumed = journal.kinds("r1")[4:]
    assert resumed == [(K.STEP_STARTED, "b"), (K.STEP_COMPLETED, "b"), (K.SAGA_FINISHED, None)]


async def test_resume_of_a_finished_saga_runs_nothing() -> None:
    journal = MemoryJournal()
    counter = Counter()
    saga = Saga(name="journal-finished").add_step("a", counter.step("a", {"v": 1}))
    first = await saga.run(journal=journal, saga_id="f1")
    count = len(journal.transitions)

    again = await saga.run(journal=journal, saga_id="f1")

    assert counter.calls == {"a": 1}
    assert len(journal.transitions) == count
    assert again.status is SagaStatus.COMPLETED
    assert again.context == first.context == {"v": 1}


async def test_resume_while_compensating_undoes_only_what_is_left() -> None:
    journal = MemoryJournal()
    undone: list[str] = []

    def undo(name: str) -> Any:
        async def run(ctx: Mapping[str, Any]) -> None:
            undone.append(name)

        return run

    for t in (
        transition(K.SAGA_STARTED, "c1", status=SagaStatus.RUNNING, context={}),
        transition(K.STEP_COMPLETED, "c1", "a", result={}),
        transition(K.STEP_COMPLETED, "c1", "b", result={}),
        transition(K.STEP_FAILED, "c1", "c", error="RuntimeError: c"),
        transition(
            K.SAGA_COMPENSATING, "c1", status=SagaStatus.COMPENSATING, error="step 'c': failed"
        ),
        transition(K.COMPENSATION_STARTED, "c1", "b"),
        transition(K.COMPENSATION_COMPLETED, "c1", "b"),
    ):
        await journal.record(t)
    counter = Counter()
    saga = (
        Saga(name="journal-saga")
        .add_step("a", counter.step("a"), undo("a"))
        .add_step("b", counter.step("b"), undo("b"))
        .add_step("c", counter.step("c"))
    )
    result = await saga.run(journal=journal, saga_id="c1")

    assert counter.calls == {}
    assert undone == ["a"]
    assert result.status is SagaStatus.COMPENSATED
    assert result.error == "step 'c': failed"


async def test_resume_retries_a_compensation_that_failed_before_a_crash() -> None:
    """The run crashed after recording a failed compensation but before finishing: the
    next run must not compensate what that step depends on without undoing it first."""
    journal = MemoryJournal()
    undone: list[str] = []

    def undo(name: str) -> Any:
        async def run(ctx: Mapping[str, Any]) -> None:
            undone.append(name)

        return run

    for t in (
        transition(K.SAGA_STARTED, "c2", status=SagaStatus.RUNNING, context={}),
        transition(K.STEP_COMPLETED, "c2", "a", result={}),
        transition(K.STEP_COMPLETED, "c2", "b", result={}),
        transition(K.STEP_FAILED, "c2", "c", error="RuntimeError: c"),
        transition(K.SAGA_COMPENSATING, "c2", status=SagaStatus.COMPENSATING),
        transition(K.COMPENSATION_STARTED, "c2", "b"),
        transition(K.COMPENSATION_FAILED, "c2", "b", error="RuntimeError: down"),
    ):
        await journal.record(t)
    saga = (
        Saga(name="journal-saga")
        .add_step("a", lambda ctx: None, undo("a"))
        .add_step("b", lambda ctx: None, undo("b"))
        .add_step("c", lambda ctx: None)
    )
    result = await saga.run(journal=journal, saga_id="c2")

    assert undone == ["b", "a"]
    assert result.status is SagaStatus.COMPENSATED


# -- fencing -----------------------------------------------------------------------------


async def test_lost_lease_stops_the_run_and_nothing_more_is_written() -> None:
    journal = MemoryJournal()
    counter = Counter()
    saga_id = str(uuid.uuid4())
    mine = journal.lease(saga_id, "worker-1")
    theirs: list[Fence] = []
    after_takeover: list[int] = []

    async def taken_over(ctx: Mapping[str, Any]) -> dict[str, int]:
        theirs.append(journal.lease(saga_id, "worker-2"))  # another worker took the saga
        after_takeover.append(len(journal.transitions))
        return {"b": 1}

    saga = (
        Saga(name="journal-fenced")
        .add_step("a", counter.step("a", {"token": uuid.uuid4().hex}))
        .add_step("b", taken_over)
        .add_step("c", counter.step("c"))
    )
    with pytest.raises(LeaseLostError, match="worker-2"):
        await saga.run(journal=journal, saga_id=saga_id, fence=mine)

    assert counter.calls == {"a": 1}, "c never started"
    assert len(journal.transitions) == after_takeover[0], "no write after the takeover"
    assert all(t.fence == mine for t in journal.transitions)
    snapshot = await journal.load(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.RUNNING
    assert snapshot.steps["b"].status is StepStatus.RUNNING

    # the new owner resumes: a comes from the journal, b and c run
    async def b_again(ctx: Mapping[str, Any]) -> dict[str, int]:
        return {"b": 2}

    token = snapshot.steps["a"].result
    resumed_saga = (
        Saga(name="journal-fenced-2")
        .add_step("a", counter.step("a", {"token": "re-executed"}))
        .add_step("b", b_again)
        .add_step("c", counter.step("c"))
    )
    result = await resumed_saga.run(journal=journal, saga_id=saga_id, fence=theirs[0])

    assert result.status is SagaStatus.COMPLETED
    assert counter.calls == {"a": 1, "c": 1}
    assert token is not None
    assert result.context == {**token, "b": 2}


async def test_lost_lease_during_compensation_stops_the_run() -> None:
    journal = MemoryJournal()
    fence = journal.lease("s-comp", "worker-1")
    undone: list[str] = []
    written: list[int] = []

    async def undo_b(ctx: Mapping[str, Any]) -> None:
        undone.append("b")
        journal.lease("s-comp", "worker-2")
        written.append(len(journal.transitions))

    async def undo_a(ctx: Mapping[str, Any]) -> None:
        undone.append("a")

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = (
        Saga(name="journal-comp-lease")
        .add_step("a", lambda ctx: None, undo_a)
        .add_step("b", lambda ctx: None, undo_b)
        .add_step("c", boom)
    )
    with pytest.raises(LeaseLostError):
        await saga.run(journal=journal, saga_id="s-comp", fence=fence)
    assert undone == ["b"], "nothing more is compensated by the worker that lost the lease"
    assert len(journal.transitions) == written[0]


async def test_a_stale_fence_is_refused_before_any_step_runs() -> None:
    journal = MemoryJournal()
    counter = Counter()
    stale = journal.lease("s-stale", "worker-1")
    journal.lease("s-stale", "worker-2")
    saga = Saga(name="journal-stale").add_step("a", counter.step("a"))

    with pytest.raises(LeaseLostError):
        await saga.run(journal=journal, saga_id="s-stale", fence=stale)
    with pytest.raises(LeaseLostError):
        await saga.run(journal=journal, saga_id="s-stale")  # no fence at all

    assert counter.calls == {}
    assert journal.transitions == []


async def test_lost_lease_cancels_concurrently_running_steps() -> None:
    journal = MemoryJournal()
    fence = journal.lease("s-par", "worker-1")
    cancelled = asyncio.Event()
    started = asyncio.Event()

    async def long(ctx: Mapping[str, Any]) -> None:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def steal(ctx: Mapping[str, Any]) -> None:
        await started.wait()
        journal.lease("s-par", "worker-2")

    saga = (
        Saga(name="journal-par")
        .add_step("long", long, depends_on=[])
        .add_step("steal", steal, depends_on=[])
    )
    with pytest.raises(LeaseLostError):
        await saga.run(journal=journal, saga_id="s-par", fence=fence)
    assert cancelled.is_set()


async def test_fenced_run_carries_its_fence_on_every_transition() -> None:
    journal = MemoryJournal()
    fence = journal.lease("s-fence", "worker-1")
    assert fence == Fence(owner="worker-1", token=1)
    await (
        Saga(name="journal-fence")
        .add_step("a", lambda ctx: None)
        .run(journal=journal, saga_id="s-fence", fence=fence)
    )
    assert journal.transitions
    assert {t.fence for t in journal.transitions} == {fence}


# -- listeners ---------------------------------------------------------------------------


async def test_listeners_see_every_transition_after_it_is_recorded() -> None:
    journal = MemoryJournal()
    sync_seen: list[Transition] = []
    async_seen: list[Transition] = []
    recorded_first: list[bool] = []

    def sync_listener(t: Transition) -> None:
        recorded_first.append(journal.transitions[-1] is t)
        sync_seen.append(t)

    async def async_listener(t: Transition) -> None:
        await asyncio.sleep(0)
        async_seen.append(t)

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = Saga(name="journal-listen").add_step("a", lambda ctx: None).add_step("b", boom)
    await saga.run(journal=journal, listeners=[sync_listener, async_listener])

    assert sync_seen == journal.transitions
    assert async_seen == journal.transitions
    assert all(recorded_first)
    assert {t.kind for t in sync_seen} >= {
        K.SAGA_STARTED,
        K.STEP_COMPLETED,
        K.STEP_FAILED,
        K.SAGA_COMPENSATING,
        K.SAGA_FINISHED,
    }


async def test_a_failing_listener_does_not_break_the_saga(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[TransitionKind] = []

    def broken(t: Transition) -> None:
        raise RuntimeError("listener bug")

    async def broken_async(t: Transition) -> None:
        raise ValueError("async listener bug")

    def healthy(t: Transition) -> None:
        seen.append(t.kind)

    saga = Saga(name="journal-broken-listener").add_step("a", lambda ctx: {"ok": True})
    with caplog.at_level(logging.WARNING, logger="sagaz.engine"):
        result = await saga.run(listeners=[broken, broken_async, healthy])

    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"ok": True}
    assert seen == [K.SAGA_STARTED, K.STEP_STARTED, K.STEP_COMPLETED, K.SAGA_FINISHED]
    failures = [r for r in caplog.records if "listener" in r.getMessage()]
    assert len(failures) == 8, "both broken listeners, for each of the four transitions"
    assert all(r.exc_info for r in failures)


async def test_config_listeners_are_notified() -> None:
    seen: list[TransitionKind] = []
    config = SagaConfig(extra_listeners=(lambda t: seen.append(t.kind),))
    await Saga(name="journal-config-listener", config=config).add_step("a", lambda ctx: None).run()
    assert seen == [K.SAGA_STARTED, K.STEP_STARTED, K.STEP_COMPLETED, K.SAGA_FINISHED]


async def test_engine_can_be_driven_directly() -> None:
    journal = MemoryJournal()
    saga = Saga(name="journal-engine").add_step("a", lambda ctx: {"a": 1})
    engine = SagaEngine(journal)
    result = await engine.run(saga.definition, {"x": 1}, saga_id="e1")
    assert result.context == {"x": 1, "a": 1}
    # resume=False ignores what the journal knows and starts over
    again = await engine.run(saga.definition, {"x": 2}, saga_id="e1", resume=False)
    assert again.context == {"x": 2, "a": 1}


# -- the journal itself ------------------------------------------------------------------


def test_memory_journal_satisfies_the_protocol() -> None:
    assert isinstance(MemoryJournal(), SagaJournal)


async def test_memory_journal_leases_fence_out_earlier_holders() -> None:
    journal = MemoryJournal()
    first = journal.lease("s", "a")
    second = journal.lease("s", "b")
    assert (first.token, second.token) == (1, 2)
    with pytest.raises(LeaseLostError, match=r"leased to b \(token 2\)"):
        await journal.record(transition(K.SAGA_STARTED, "s", fence=first))
    await journal.record(transition(K.SAGA_STARTED, "s", fence=second, status=SagaStatus.RUNNING))
    assert len(journal.transitions) == 1
    # sagas that were never leased accept unfenced writes
    await journal.record(transition(K.SAGA_STARTED, "other"))


async def test_memory_journal_load_returns_an_independent_copy() -> None:
    journal = MemoryJournal()
    assert await journal.load("missing") is None
    await journal.record(
        transition(K.SAGA_STARTED, "s", status=SagaStatus.RUNNING, context={"a": 1})
    )
    await journal.record(transition(K.STEP_COMPLETED, "s", "x", result={"r": 1}))
    loaded = await journal.load("s")
    assert loaded is not None
    loaded.context["a"] = 2
    loaded.steps["x"].status = StepStatus.FAILED
    again = await journal.load("s")
    assert again is not None
    assert again.context == {"a": 1}
    assert again.steps["x"].status is StepStatus.COMPLETED


def test_apply_transition_state_machine() -> None:
    snapshot = SagaSnapshot(saga_id="s", saga_name="n", status=SagaStatus.PENDING, context={})
    apply_transition(
        snapshot,
        transition(
            K.SAGA_STARTED, "s", status=SagaStatus.RUNNING, context={"a": 1}, correlation_id="c"
        ),
    )
    assert snapshot.status is SagaStatus.RUNNING
    assert snapshot.context == {"a": 1}
    assert snapshot.correlation_id == "c"

    apply_transition(snapshot, transition(K.STEP_STARTED, "s", "x", attempt=1))
    step = snapshot.steps["x"]
    assert (step.status, step.attempts) == (StepStatus.RUNNING, 1)
    assert step.started_at is not None
    first_start = step.started_at
    apply_transition(snapshot, transition(K.STEP_ATTEMPT_FAILED, "s", "x", attempt=1, error="e1"))
    assert (step.status, step.error) == (StepStatus.RUNNING, "e1")
    apply_transition(snapshot, transition(K.STEP_STARTED, "s", "x", attempt=2))
    assert step.attempts == 2
    assert step.started_at == first_start
    apply_transition(snapshot, transition(K.STEP_COMPLETED, "s", "x", attempt=2, result={"r": 1}))
    assert (step.status, step.result, step.error) == (StepStatus.COMPLETED, {"r": 1}, None)
    assert step.finished_at is not None

    apply_transition(snapshot, transition(K.SAGA_COMPENSATING, "s", status=SagaStatus.COMPENSATING))
    apply_transition(snapshot, transition(K.COMPENSATION_STARTED, "s", "x"))
    assert step.status is StepStatus.COMPENSATING
    apply_transition(snapshot, transition(K.COMPENSATION_FAILED, "s", "x", error="stuck"))
    assert (step.status, step.error) == (StepStatus.COMPENSATION_FAILED, "stuck")
    apply_transition(
        snapshot, transition(K.SAGA_FINISHED, "s", status=SagaStatus.FAILED, error="first")
    )
    assert snapshot.status is SagaStatus.FAILED
    assert snapshot.status.is_terminal
    assert snapshot.error == "first"
    assert snapshot.correlation_id == "c"


def test_transition_step_status() -> None:
    assert transition(K.STEP_FAILED, "s", "x").step_status is StepStatus.FAILED
    assert transition(K.SAGA_FINISHED, "s").step_status is None


def test_step_snapshot_is_a_deprecated_alias_of_the_one_step_record() -> None:
    with pytest.warns(DeprecationWarning, match="StepOutcome"):
        from sagaz.journal import StepSnapshot
    assert StepSnapshot is StepOutcome
