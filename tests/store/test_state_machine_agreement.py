"""One state machine: the SQL store (which folds a batch with `apply_transition` and merges
the fold into the stored rows in SQL) and the in-memory journal (which applies each
transition to a snapshot) end in the same snapshot, field by field, timestamps included,
for the same transitions - on PostgreSQL and on SQLite.

Two sources of transitions: real engine runs on the SQL store (completed, retried,
compensated, failed compensation, step and saga timeouts, fail-fast cancellation, a
crashed run resumed, given up going forward, given up while compensating, failed as
unreadable), whose transitions are then replayed into a memory journal; and generated
sequences (hypothesis), written in generated batches, against the same sequence applied
one transition at a time."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz import MemoryJournal, Saga, action, compensate, current_run
from sagaz.engine import RunOptions, SagaEngine
from sagaz.run_context import LeaseClock
from sagaz.state import Fence, SagaSnapshot, Transition, TransitionKind
from sagaz.store.stores import AsyncSagaStore, SagaStore
from sagaz.types import SagaStatus
from sagaz.worker.claims import claim_saga
from sagaz.worker.give_up import abandon_compensation, fail_saga

#: Columns only a SQL store has (claim bookkeeping), which no transition sets.
STORE_ONLY = {"idempotency_key", "lease_token", "attempts", "stalled_claims"}


def comparable(snapshot: SagaSnapshot | None) -> dict[str, Any]:
    """Every field a transition can set, steps included (each step's every field)."""
    assert snapshot is not None
    values = {f.name: getattr(snapshot, f.name) for f in fields(SagaSnapshot)}
    for name in STORE_ONLY:
        del values[name]
    values["steps"] = {name: asdict(step) for name, step in sorted(snapshot.steps.items())}
    return values


class Crash(BaseException):
    """The worker process dying mid-run: the engine handles no BaseException."""


crash_in_d: set[str] = set()
crash_in_undo_c: set[str] = set()


class Agreement(Saga):
    saga_name = "state-machine-agreement"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        if ctx.get("a_hangs"):
            await asyncio.Event().wait()
        return {"a": current_run().attempt}

    @compensate("a")
    async def undo_a(self, ctx: Any) -> None:
        if ctx.get("undo_a_fails"):
            raise RuntimeError("cannot undo a")

    @action("b", max_retries=2, retry_backoff=0)
    async def b(self, ctx: Any) -> dict[str, Any]:
        run = current_run()
        if ctx.get("b_times_out"):
            await asyncio.Event().wait()
        if run.attempt <= ctx.get("b_failures", 0):
            raise RuntimeError(f"b attempt {run.attempt}")
        return {"b": run.attempt}

    @compensate("b")
    async def undo_b(self, ctx: Any) -> None:
        return None

    @action("c", depends_on=["a", "b"], timeout_seconds=0.05)
    async def c(self, ctx: Any) -> dict[str, Any]:
        if ctx.get("c_hangs"):
            await asyncio.Event().wait()
        return {"c": True}

    @compensate("c")
    async def undo_c(self, ctx: Any) -> None:
        if current_run().saga_id in crash_in_undo_c:
            raise Crash

    @action("d", depends_on=["c"])
    async def d(self, ctx: Any) -> None:
        if current_run().saga_id in crash_in_d:
            raise Crash
        if ctx.get("d_fails"):
            raise RuntimeError("d failed")


class Recording:
    """The store, keeping every transition it is asked to record (none is refused here).

    Kept before the write: a crash can interrupt a write, never its being asked for."""

    def __init__(self, store: AsyncSagaStore) -> None:
        self.store = store
        self.transitions: list[Transition] = []

    async def record(self, transition: Transition) -> None:
        self.transitions.append(transition)
        await self.store.record(transition)

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        return await self.store.load(saga_id)


async def claim(engine: AsyncEngine, saga_id: str) -> tuple[Fence, LeaseClock]:
    started = time.monotonic()
    async with engine.begin() as connection:
        snapshot = await connection.run_sync(
            lambda sync: claim_saga(
                sync, saga_id, owner="agreement", lease_seconds=30, now=datetime.now(UTC)
            )
        )
    assert snapshot is not None
    return Fence("agreement", snapshot.lease_token), LeaseClock(30, 1, started)


async def crash_then(
    engine: AsyncEngine, store: Recording, run: SagaEngine, saga_id: str, then: str
) -> None:
    """Crash a run of the saga (in d; for "abandon", in c's compensation: each runs alone,
    no other write in flight), then end it as `then` says."""
    definition = Agreement().definition
    crashes = crash_in_undo_c if then == "abandon" else crash_in_d
    crashes.add(saga_id)
    try:
        with pytest.raises(Crash):
            await run.run(definition, {"d_fails": then == "abandon"}, saga_id=saga_id)
    finally:
        crashes.discard(saga_id)
    # The crashed run's last write (d's start) is written behind; let it land before the
    # claim below fences unleased writes out (a real crash may lose it: that is allowed).
    await store.store._written_behind(saga_id)
    if then == "resume":
        await run.run(definition, {}, saga_id=saga_id)
        return
    fence, lease = await claim(engine, saga_id)
    if then == "give_up":
        await run.run(definition, {}, saga_id=saga_id, fence=fence, lease=lease, give_up="stop")
    elif then == "unreadable":
        await fail_saga(store, saga_id, definition.name, fence, "column context unreadable")
    else:
        snapshot = await store.load(saga_id)
        assert snapshot is not None
        assert snapshot.status is SagaStatus.COMPENSATING
        await abandon_compensation(store, snapshot, fence, lease, "compensation crashed")


RUNS: dict[str, dict[str, Any]] = {
    "completed": {},
    "retried": {"b_failures": 2},
    "compensated": {"b_failures": 3},
    "compensation failed": {"d_fails": True, "undo_a_fails": True},
    "step timeout": {"c_hangs": True},
    "saga timeout": {"a_hangs": True},
    "fail fast": {"a_hangs": True, "b_failures": 3},
}
CRASHES = ["resume", "give_up", "unreadable", "abandon"]


@pytest.mark.parametrize("case", [*RUNS, *CRASHES])
async def test_engine_runs_leave_the_same_snapshot_in_sql_and_in_memory(
    async_engine: AsyncEngine, case: str
) -> None:
    store = Recording(AsyncSagaStore(async_engine))
    timeout = 0.3 if case == "saga timeout" else None
    options = RunOptions(compensation_retries=1, retry_backoff=0, saga_timeout_seconds=timeout)
    run = SagaEngine(store, options)
    saga_id = str(uuid.uuid4())
    if case in RUNS:
        await run.run(Agreement().definition, RUNS[case], saga_id=saga_id)
    else:
        await crash_then(async_engine, store, run, saga_id, case)
    memory = MemoryJournal()
    for transition in store.transitions:
        await memory.record(replace(transition, fence=None))
    stored = comparable(await store.load(saga_id))
    assert stored == comparable(await memory.load(saga_id))
    assert stored["status"].is_terminal


# -- generated sequences ---------------------------------------------------------------

STEPS = st.sampled_from(["a", "b"])
ERRORS = st.sampled_from([None, None, "", "e1", "e2"])
TEXT = st.text(st.characters(codec="ascii", exclude_characters="\x00"), max_size=4)
DOCS = st.dictionaries(st.sampled_from(["x", "y"]), st.integers() | TEXT, max_size=2)
SAGA_KINDS = [
    TransitionKind.SAGA_STARTED,
    TransitionKind.SAGA_COMPENSATING,
    TransitionKind.SAGA_FINISHED,
]
STEP_KINDS = [kind for kind in TransitionKind if kind not in SAGA_KINDS]


@st.composite
def transition_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Any transition of one saga: a step-level one four times in five."""
    if draw(st.integers(0, 4)):
        kind = draw(st.sampled_from(STEP_KINDS))
        return {
            "kind": kind,
            "step": draw(STEPS),
            "attempt": draw(st.integers(0, 3)),
            "error": draw(ERRORS),
            "result": draw(DOCS) if kind is TransitionKind.STEP_COMPLETED else None,
        }
    return {
        "kind": draw(st.sampled_from(SAGA_KINDS)),
        "status": draw(st.none() | st.sampled_from(list(SagaStatus))),
        "context": draw(st.none() | DOCS),
        "error": draw(ERRORS),
        "correlation_id": draw(st.none() | TEXT),
    }


sequences = st.tuples(
    st.lists(transition_fields(), max_size=16),
    st.lists(st.integers(1, 6), min_size=16, max_size=16),  # batch sizes
)


@settings(
    max_examples=75,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(sequence=sequences)
async def test_any_sequence_in_any_batches_ends_as_applied_one_by_one(
    sync_engine: sa.Engine, sequence: tuple[list[dict[str, Any]], list[int]]
) -> None:
    drawn, batch_sizes = sequence
    saga_id = str(uuid.uuid4())
    start = datetime(2026, 1, 1, tzinfo=UTC)
    transitions = [
        Transition(saga_id=saga_id, saga_name="generated", at=start + timedelta(seconds=n), **f)
        for n, f in enumerate([{"kind": TransitionKind.SAGA_STARTED}, *drawn])
    ]
    store = SagaStore(sync_engine)
    memory = MemoryJournal()
    offset = 0
    for size in batch_sizes:
        batch = transitions[offset : offset + size]
        if batch:
            store.record_many(batch)
        offset += size
    for transition in transitions:
        await memory.record(transition)
    assert comparable(store.get(saga_id)) == comparable(await memory.load(saga_id))
