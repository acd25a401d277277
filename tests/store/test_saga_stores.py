"""The SQL stores as the engine's journal: persistence, group commit, fencing, resume,
reads - on PostgreSQL (asyncpg) and SQLite (aiosqlite), through one shared implementation."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.orm import Session

from sagaz import (
    LeaseLostError,
    SagaConfig,
    SagaStatus,
    StepStatus,
    Transition,
    TransitionKind,
    start_saga,
)
from sagaz.engine import SagaEngine
from sagaz.journal import Fence, utcnow
from sagaz.saga import Saga, action, compensate
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.stores import AsyncSagaStore, SagaStore
from tests.conftest import DatabaseUrls

calls: list[str] = []


class StoredSaga(Saga):
    saga_name = "stored-saga"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        calls.append("a")
        return {"a": 1}

    @compensate("a")
    async def undo_a(self, ctx: Any) -> None:
        calls.append("undo_a")

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> dict[str, Any]:
        calls.append("b")
        if ctx.get("fail"):
            raise RuntimeError("b failed")
        return {"b": ctx["a"] + 1}


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    calls.clear()


def step_rows(engine: sa.Engine, saga_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        rows = connection.execute(sa.select(saga_steps).where(saga_steps.c.saga_id == saga_id))
        return {row.name: row for row in rows}


async def test_completed_and_compensated_sagas_are_persisted(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    store = AsyncSagaStore(async_engine)
    engine = SagaEngine(store)
    ok = await engine.run(
        StoredSaga().definition, {"n": 1}, saga_id="00000000-0000-4000-8000-000000000001"
    )
    bad = await engine.run(
        StoredSaga().definition, {"fail": True}, saga_id="00000000-0000-4000-8000-000000000002"
    )
    assert ok.status is SagaStatus.COMPLETED
    assert bad.status is SagaStatus.COMPENSATED
    stored_ok = await store.load(ok.saga_id)
    assert stored_ok is not None
    assert stored_ok.status is SagaStatus.COMPLETED
    assert stored_ok.context == {"n": 1, "a": 1, "b": 2}
    assert {n: s.status for n, s in stored_ok.steps.items()} == {
        "a": StepStatus.COMPLETED,
        "b": StepStatus.COMPLETED,
    }
    assert stored_ok.steps["a"].result == {"a": 1}
    rows = step_rows(sync_engine, bad.saga_id)
    assert rows["a"].status == "compensated"
    assert rows["b"].status == "failed"
    assert "b failed" in rows["b"].error
    stored_bad = SagaStore(sync_engine).get(bad.saga_id)
    assert stored_bad is not None
    assert stored_bad.status is SagaStatus.COMPENSATED
    assert "b failed" in (stored_bad.error or "")


async def test_concurrent_sagas_are_group_committed(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    commits = 0

    def count(_connection: Any) -> None:
        nonlocal commits
        commits += 1

    sa.event.listen(async_engine.sync_engine, "commit", count)
    store = AsyncSagaStore(async_engine)
    at = utcnow()
    # 60 sagas record at once: the first write finds all 60 queued and commits them together.
    await asyncio.gather(
        *(
            store.record(
                Transition(
                    TransitionKind.SAGA_STARTED,
                    f"00000000-0000-4000-8000-{i:012d}",
                    "stored-saga",
                    at,
                    status=SagaStatus.RUNNING,
                    context={"i": i},
                )
            )
            for i in range(60)
        )
    )
    assert commits == 1
    # And whole runs interleave into far fewer commits than transitions.
    commits = 0
    engine = SagaEngine(store)
    definition = StoredSaga().definition
    results = await asyncio.gather(
        *(
            engine.run(definition, {"i": i}, saga_id=f"00000000-0000-4000-9000-{i:012d}")
            for i in range(40)
        )
    )
    assert all(r.status is SagaStatus.COMPLETED for r in results)
    assert commits < 40 * 6 / 2, f"{commits} commits for {40 * 6} transitions"
    with sync_engine.connect() as connection:
        done = connection.scalar(
            sa.select(sa.func.count()).select_from(sagas).where(sagas.c.status == "completed")
        )
        steps = connection.scalar(sa.select(sa.func.count()).select_from(saga_steps))
    assert (done, steps) == (40, 80)


class NulSaga(Saga):
    """Hostile text: a NUL character, which PostgreSQL's text and JSONB columns refuse."""

    saga_name = "stored-saga-nul"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        return {"a": 1}

    @compensate("a")
    async def undo_a(self, ctx: Any) -> None:
        return None

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> dict[str, Any]:
        if ctx["mode"] == "raise":
            raise ValueError("bad\x00byte")
        if ctx["mode"] == "surrogate":
            raise ValueError("lone \ud800")
        return {"b": "nul\x00"}


async def test_nul_characters_fail_their_saga_not_the_batch(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    """A step raising an error with a NUL character, and one returning one, are compensated
    with the cause stored; sagas group-committed in the same batches complete."""
    engine = SagaEngine(AsyncSagaStore(async_engine))
    raising, returning, surrogate, *others = await asyncio.gather(
        engine.run(NulSaga().definition, {"mode": "raise"}, saga_id=str(uuid.uuid4())),
        engine.run(NulSaga().definition, {"mode": "return"}, saga_id=str(uuid.uuid4())),
        engine.run(NulSaga().definition, {"mode": "surrogate"}, saga_id=str(uuid.uuid4())),
        *(
            engine.run(StoredSaga().definition, {"n": n}, saga_id=str(uuid.uuid4()))
            for n in range(10)
        ),
    )
    assert [r.status for r in others] == [SagaStatus.COMPLETED] * 10
    assert raising.status is SagaStatus.COMPENSATED
    assert returning.status is SagaStatus.COMPENSATED
    assert surrogate.status is SagaStatus.COMPENSATED
    assert step_rows(sync_engine, surrogate.saga_id)["b"].error == "ValueError: lone \\ud800"
    stored = step_rows(sync_engine, raising.saga_id)
    assert stored["b"].error == "ValueError: bad\\x00byte"
    stored = step_rows(sync_engine, returning.saga_id)
    assert "result of step 'b'['b'] contains a NUL character" in stored["b"].error
    assert stored["a"].status == "compensated"


def set_lease(engine: sa.Engine, saga_id: str, owner: str | None, token: int) -> None:
    with engine.begin() as connection:
        connection.execute(
            sa.update(sagas)
            .where(sagas.c.id == saga_id)
            .values(lease_owner=owner, lease_token=token)
        )


def wait_for_step_row(engine: sa.Engine, saga_id: str, step: str) -> None:
    query = sa.select(saga_steps.c.status).where(
        saga_steps.c.saga_id == saga_id, saga_steps.c.name == step
    )
    for _ in range(500):
        with engine.connect() as connection:
            if connection.scalar(query) is not None:
                return
        time.sleep(0.01)
    raise AssertionError(f"step {step} of saga {saga_id} was never recorded as started")


async def test_a_worker_that_lost_its_lease_can_write_nothing(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    with Session(sync_engine) as session:
        saga_id = start_saga(session, StoredSaga, {"n": 1})
        session.commit()
    set_lease(sync_engine, saga_id, "worker-a", 1)
    stolen = asyncio.Event()

    class Stealing(Saga):
        saga_name = "stored-saga-stealing"

        @action("a")
        async def a(self, ctx: Any) -> dict[str, Any]:
            return {"a": 1}

        @action("b", depends_on=["a"])
        def b(self, ctx: Any) -> None:
            # b's start record is written behind: once it is in, another worker takes the
            # lease while this step runs.
            wait_for_step_row(sync_engine, saga_id, "b")
            set_lease(sync_engine, saga_id, "worker-b", 2)
            stolen.set()

    store = AsyncSagaStore(async_engine)
    with pytest.raises(LeaseLostError, match=saga_id):
        await SagaEngine(store).run(
            Stealing().definition, {}, saga_id=saga_id, fence=Fence("worker-a", 1)
        )
    assert stolen.is_set()
    snapshot = await store.load(saga_id)
    assert snapshot is not None
    # a completed under the old lease; b's completion and everything after were refused.
    assert snapshot.steps["a"].status is StepStatus.COMPLETED
    assert snapshot.steps["b"].status is StepStatus.RUNNING
    assert snapshot.status is SagaStatus.RUNNING
    assert snapshot.lease_owner == "worker-b"


async def test_unfenced_writes_to_a_leased_saga_are_refused(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    with Session(sync_engine) as session:
        saga_id = start_saga(session, StoredSaga, {})
        session.commit()
    set_lease(sync_engine, saga_id, "worker-a", 3)
    store = AsyncSagaStore(async_engine)
    with pytest.raises(LeaseLostError):
        await SagaEngine(store).run(StoredSaga().definition, {}, saga_id=saga_id)
    with pytest.raises(LeaseLostError):
        await SagaEngine(store).run(
            StoredSaga().definition, {}, saga_id=saga_id, fence=Fence("worker-a", 2)
        )
    assert calls == []
    snapshot = await store.load(saga_id)
    assert snapshot is not None
    assert snapshot.status is SagaStatus.PENDING


async def test_resume_loads_completed_steps_instead_of_rerunning(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    with Session(sync_engine) as session:
        saga_id = start_saga(session, StoredSaga, {"n": 1})
        session.commit()
    at = utcnow()
    SagaStore(sync_engine).record_many(
        [
            Transition(
                TransitionKind.SAGA_STARTED,
                saga_id,
                "stored-saga",
                at,
                status=SagaStatus.RUNNING,
                context={"n": 1},
            ),
            Transition(
                TransitionKind.STEP_STARTED, saga_id, "stored-saga", at, step="a", attempt=1
            ),
            Transition(
                TransitionKind.STEP_COMPLETED,
                saga_id,
                "stored-saga",
                at,
                step="a",
                attempt=1,
                result={"a": 41},
            ),
            Transition(
                TransitionKind.STEP_STARTED, saga_id, "stored-saga", at, step="b", attempt=1
            ),
        ]
    )
    result = await SagaEngine(AsyncSagaStore(async_engine)).run(
        StoredSaga().definition, {}, saga_id=saga_id
    )
    assert calls == ["b"]  # a's result came from the store
    assert result.status is SagaStatus.COMPLETED
    assert result.context == {"n": 1, "a": 41, "b": 42}
    assert result.steps["b"].attempts == 2  # the interrupted attempt counts


async def test_resume_of_a_compensating_saga_finishes_compensation(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    with Session(sync_engine) as session:
        saga_id = start_saga(session, StoredSaga, {})
        session.commit()
    at = utcnow()
    SagaStore(sync_engine).record_many(
        [
            Transition(
                TransitionKind.SAGA_STARTED,
                saga_id,
                "stored-saga",
                at,
                status=SagaStatus.RUNNING,
                context={},
            ),
            Transition(
                TransitionKind.STEP_COMPLETED, saga_id, "stored-saga", at, step="a", result={"a": 1}
            ),
            Transition(
                TransitionKind.STEP_FAILED, saga_id, "stored-saga", at, step="b", error="boom"
            ),
            Transition(
                TransitionKind.SAGA_COMPENSATING,
                saga_id,
                "stored-saga",
                at,
                status=SagaStatus.COMPENSATING,
                error="boom",
            ),
        ]
    )
    result = await SagaEngine(AsyncSagaStore(async_engine)).run(
        StoredSaga().definition, {}, saga_id=saga_id
    )
    assert calls == ["undo_a"]
    assert result.status is SagaStatus.COMPENSATED


async def test_get_and_list_with_filters_and_paging(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    store = AsyncSagaStore(async_engine)
    engine = SagaEngine(store)
    for i in range(5):
        await engine.run(
            StoredSaga().definition,
            {"fail": i % 2 == 1},
            saga_id=f"00000000-0000-4000-8000-{i:012d}",
        )
    completed = await store.list(status="completed")
    compensated = await store.list(status=SagaStatus.COMPENSATED, name="stored-saga")
    assert (len(completed), len(compensated)) == (3, 2)
    page1 = await store.list(limit=2)
    page2 = await store.list(limit=2, offset=2)
    page3 = await store.list(limit=2, offset=4)
    ids = [s.saga_id for s in page1 + page2 + page3]
    assert len(ids) == len(set(ids)) == 5
    assert await store.list(name="nope") == []
    sync_store = SagaStore(sync_engine)
    assert len(sync_store.list(status="completed")) == 3
    assert sync_store.get("00000000-0000-4000-8000-00000000abcd") is None
    with pytest.raises(ValueError, match="limit"):
        sync_store.list(limit=0)
    with pytest.raises(ValueError, match="not a valid"):
        sync_store.list(status="nonsense")


async def test_saga_run_persists_through_an_initialized_config(sqlite: DatabaseUrls) -> None:
    config = SagaConfig(database_url=sqlite.sync)
    await config.initialize()
    try:
        result = await StoredSaga(config=config).run({"n": 5})
        stored = await config.store.load(result.saga_id)
    finally:
        await config.close()
        await config.close()  # idempotent
    assert stored is not None
    assert stored.status is SagaStatus.COMPLETED


@pytest.mark.parametrize(
    "at",
    [
        datetime(1969, 12, 31, 23, 59, 59, 500001, tzinfo=UTC),  # before the epoch
        datetime(2026, 12, 5, 1, 2, 3, 999999, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # past double's 2**53 us
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
        datetime(2026, 6, 1, 12, 0, 0, 654321),  # naive: taken as UTC
    ],
)
def test_transition_timestamps_are_stored_to_the_microsecond(
    sync_engine: sa.Engine, at: datetime
) -> None:
    """PostgreSQL gets them as epoch microseconds in the batch's JSON: any UTC datetime
    Python can hold reads back exactly (a naive one taken as UTC)."""
    saga_id = str(uuid.uuid4())
    expected = at if at.tzinfo is not None else at.replace(tzinfo=UTC)

    def transition(kind: TransitionKind, **fields: Any) -> Transition:
        return Transition(kind=kind, saga_id=saga_id, saga_name="stamped", at=at, **fields)

    store = SagaStore(sync_engine)
    store.record_many([transition(TransitionKind.SAGA_STARTED, status=SagaStatus.RUNNING)])
    store.record_many(
        [
            transition(TransitionKind.STEP_STARTED, step="a", attempt=1),
            transition(TransitionKind.STEP_COMPLETED, step="a", attempt=1, result={}),
            transition(TransitionKind.SAGA_FINISHED, status=SagaStatus.COMPLETED),
        ]
    )
    snapshot = store.get(saga_id)
    assert snapshot is not None
    assert snapshot.updated_at == expected
    step = snapshot.steps["a"]
    assert (step.started_at, step.finished_at) == (expected, expected)
    row = step_rows(sync_engine, saga_id)["a"]
    assert row.updated_at == expected or row.updated_at == expected.replace(tzinfo=None)


def test_a_fenced_batch_writes_the_sagas_whose_lease_it_holds_and_refuses_the_rest(
    sync_engine: sa.Engine,
) -> None:
    """One batch, four sagas: the current lease, an older token, another owner, and a
    saga that is not stored. Only the first is written (on PostgreSQL the check and the
    writes are one statement); the others change nothing."""
    with Session(sync_engine) as session:
        stored = [start_saga(session, StoredSaga, {"n": n}) for n in range(3)]
        session.commit()
    missing = str(uuid.uuid4())
    for saga_id in stored:
        set_lease(sync_engine, saga_id, "worker-a", 2)
    fences = [Fence("worker-a", 2), Fence("worker-a", 1), Fence("worker-b", 2)]
    batch = []
    for saga_id, fence in [*zip(stored, fences, strict=True), (missing, Fence("worker-a", 2))]:
        batch += [
            Transition(
                kind=TransitionKind.SAGA_STARTED,
                saga_id=saga_id,
                saga_name=StoredSaga.saga_name,
                at=utcnow(),
                status=SagaStatus.RUNNING,
                fence=fence,
            ),
            Transition(
                kind=TransitionKind.STEP_STARTED,
                saga_id=saga_id,
                saga_name=StoredSaga.saga_name,
                at=utcnow(),
                step="a",
                attempt=1,
                fence=fence,
            ),
        ]
    store = SagaStore(sync_engine)
    with pytest.raises(LeaseLostError, match=stored[1]):
        store.record_many(batch)
    written = store.get(stored[0])
    assert written is not None
    assert written.status is SagaStatus.RUNNING
    assert written.steps["a"].status is StepStatus.RUNNING
    for saga_id in stored[1:]:
        untouched = store.get(saga_id)
        assert untouched is not None
        assert (untouched.status, untouched.steps) == (SagaStatus.PENDING, {})
    assert store.get(missing) is None
