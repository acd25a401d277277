"""Hostile input at the session-bound API (DESIGN rule 6), on real PostgreSQL and SQLite:
what PostgreSQL (or Python reading a document back) would refuse is refused by
`start_saga` / `outbox.add` first, with an error naming the argument, before anything is
queued - and what is already queued on the session commits intact. The limits
themselves (the longest key, the biggest integer, the deepest nesting) round-trip."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz import (
    InvalidContextError,
    Saga,
    SagaContextManager,
    SagaRegistryError,
    SagaStatus,
    action,
    compensate,
    outbox,
    start_saga,
)
from sagaz._json import MAX_DEPTH, MAX_INT_DIGITS
from sagaz.definition import MAX_NAME_LENGTH
from sagaz.engine import SagaEngine
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import saga_steps, sagas
from sagaz.store.stores import AsyncSagaStore
from sagaz.store.unit_of_work import pending_rows


class HostileSaga(Saga):
    saga_name = "hostile-input"

    @action("reserve")
    async def reserve(self, ctx: Any) -> dict[str, Any]:
        return {"reserved": True}

    @compensate("reserve")
    async def release(self, ctx: Any) -> None:
        return None

    @action("answer", depends_on=["reserve"])
    async def answer(self, ctx: Any) -> dict[str, Any]:
        return {"answer": RESULTS[ctx["mode"]]()}


def _cycle() -> dict[str, Any]:
    loop: dict[str, Any] = {}
    loop["again"] = loop
    return loop


def deep(levels: int) -> dict[str, Any]:
    document: dict[str, Any] = {}
    inner = document
    for _ in range(levels - 1):
        inner["d"] = {}
        inner = inner["d"]
    return document


BIGGEST = 10**MAX_INT_DIGITS - 1

RESULTS: dict[str, Callable[[], Any]] = {
    "fine": lambda: "ok",
    "surrogate": lambda: "x\udc80",
    "huge": lambda: 10**5000,
    "cycle": _cycle,
    "deep": lambda: deep(MAX_DEPTH + 5),
}

LONG_NAME = "n" * MAX_NAME_LENGTH


class LongNamesSaga(Saga):
    saga_name = "l" * MAX_NAME_LENGTH

    @action(LONG_NAME)
    async def first(self, ctx: Any) -> dict[str, Any]:
        return {"first": "é"}

    @action("ü" * MAX_NAME_LENGTH, depends_on=[LONG_NAME])
    async def second(self, ctx: Any) -> None:
        return None


def counts(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) or 0,
        )


SAGA = HostileSaga

BAD_CALLS: list[tuple[str, Callable[[Session], object], type[Exception], str]] = [
    # idempotency keys: NUL, lone surrogate, longer than the column
    (
        "key-nul",
        lambda s: start_saga(s, SAGA, {}, idempotency_key="order-\x00"),
        InvalidContextError,
        "idempotency_key contains a NUL character",
    ),
    (
        "key-surrogate",
        lambda s: start_saga(s, SAGA, {}, idempotency_key="order-\ud800"),
        InvalidContextError,
        "idempotency_key contains a lone surrogate '\\ud800'",
    ),
    (
        "key-long",
        lambda s: start_saga(s, SAGA, {}, idempotency_key="k" * 256),
        InvalidContextError,
        "idempotency_key must be a non-empty str of at most 255 characters, got 256 characters",
    ),
    # the event key and topic
    (
        "event-key-nul",
        lambda s: outbox.add(s, "t", {}, key="a\x00"),
        InvalidContextError,
        "key contains a NUL character",
    ),
    (
        "event-key-surrogate",
        lambda s: outbox.add(s, "t", {}, key="\udfff"),
        InvalidContextError,
        "key contains a lone surrogate '\\udfff'",
    ),
    (
        "event-key-long",
        lambda s: outbox.add(s, "t", {}, key="k" * 256),
        InvalidContextError,
        "key must be a str of at most 255 characters, got 256 characters",
    ),
    ("topic-nul", lambda s: outbox.add(s, "t\x00", {}), InvalidContextError, "contains '\\x00'"),
    ("topic-surrogate", lambda s: outbox.add(s, "t\ud800", {}), InvalidContextError, "topic"),
    (
        "topic-long",
        lambda s: outbox.add(s, "t" * 250, {}),
        InvalidContextError,
        "is 250 characters long; Kafka topics have at most 249",
    ),
    (
        "header-surrogate",
        lambda s: outbox.add(s, "t", {}, headers={"h": "\ud800"}),
        InvalidContextError,
        "header 'h' value contains a lone surrogate",
    ),
    # saga_id must be a saga's UUID
    (
        "saga-id-word",
        lambda s: outbox.add(s, "t", {}, saga_id="nope"),
        InvalidContextError,
        "saga_id must be a saga's UUID (as returned by start_saga), got 'nope'",
    ),
    (
        "saga-id-int",
        lambda s: outbox.add(s, "t", {}, saga_id=7),  # type: ignore[arg-type]
        InvalidContextError,
        "saga_id must be a saga's UUID",
    ),
    (
        "saga-id-empty",
        lambda s: outbox.add(s, "t", {}, saga_id=""),
        InvalidContextError,
        "saga_id must be a saga's UUID",
    ),
    # documents PostgreSQL would refuse, or Python could not read back
    (
        "context-surrogate",
        lambda s: start_saga(s, SAGA, {"name": ["ok", "\ud83d"]}),
        InvalidContextError,
        "context['name'][1] contains a lone surrogate '\\ud83d'",
    ),
    (
        "context-key-surrogate",
        lambda s: start_saga(s, SAGA, {"a": {"\ud83d": 1}}),
        InvalidContextError,
        "context['a'] has a key '\\ud83d' with a lone surrogate",
    ),
    (
        "context-huge-int",
        lambda s: start_saga(s, SAGA, {"n": 10**5000}),
        InvalidContextError,
        f"context['n'] is an integer of more than {MAX_INT_DIGITS} digits",
    ),
    (
        "context-deep",
        lambda s: start_saga(s, SAGA, deep(10_000)),
        InvalidContextError,
        f"nests deeper than {MAX_DEPTH} levels",
    ),
    (
        "context-cycle",
        lambda s: start_saga(s, SAGA, {"loop": _cycle()}),
        InvalidContextError,
        "context['loop']['again'] is a container that contains itself (a cycle)",
    ),
    (
        "payload-surrogate",
        lambda s: outbox.add(s, "t", {"text": "\udc00"}),
        InvalidContextError,
        "payload['text'] contains a lone surrogate",
    ),
    (
        "payload-huge-int",
        lambda s: outbox.add(s, "t", [10**4301]),
        InvalidContextError,
        "payload[0] is an integer of more than",
    ),
    (
        "payload-cycle",
        lambda s: outbox.add(s, "t", _cycle()),
        InvalidContextError,
        "payload['again'] is a container that contains itself",
    ),
    # a saga instance that is not the one registered under its name
    (
        "impostor",
        lambda s: start_saga(
            s, Saga(name="hostile-input").add_step("reserve", lambda ctx: None), {}
        ),
        SagaRegistryError,
        "saga name 'hostile-input' is registered to class",
    ),
]


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [pytest.param(*case[1:], id=case[0]) for case in BAD_CALLS],
)
def test_bad_input_is_refused_naming_it_and_committed_work_survives(
    sync_engine: sa.Engine, call: Callable[[Session], object], error: type[Exception], message: str
) -> None:
    assert_refused_before_queueing(sync_engine, call, error, message)


def assert_refused_before_queueing(
    sync_engine: sa.Engine, call: Callable[[Session], object], error: type[Exception], message: str
) -> None:
    """`call` raises `error` with `message`, queues nothing, and the session's other work
    still commits."""
    with Session(sync_engine) as session:
        kept = start_saga(session, HostileSaga, {"ok": True}, idempotency_key="kept")
        outbox.add(session, "kept", {"ok": True}, saga_id=kept)
        with pytest.raises(error, match=re.escape(message)):
            call(session)
        assert len(pending_rows(session, sagas)) == 1, "nothing more was queued"
        assert len(pending_rows(session, outbox_table)) == 1
        session.commit()
    assert counts(sync_engine) == (1, 1)


def test_a_bad_correlation_id_is_refused_before_the_block_runs(sync_engine: sa.Engine) -> None:
    with Session(sync_engine) as session:
        start_saga(session, HostileSaga, {"ok": True})
        for hostile in ("x" * 129, "a\r\nSet-Cookie: x", "nul\x00", "\ud800", "spa ce"):
            with (
                pytest.raises(InvalidContextError, match="correlation_id must be 1 to 128"),
                SagaContextManager.scope(hostile),
            ):
                start_saga(session, HostileSaga, {})
        assert len(pending_rows(session, sagas)) == 1
        session.commit()
    assert counts(sync_engine) == (1, 0)


def test_the_limits_round_trip_through_the_database(sync_engine: sa.Engine) -> None:
    """The longest key/topic/correlation id (in characters, also non-ASCII ones), the
    biggest integers and the deepest nesting allowed are written and read back intact."""
    context = {
        "big": BIGGEST,
        "small": -BIGGEST,
        "deep": deep(MAX_DEPTH - 1),  # with the context itself: MAX_DEPTH levels
        "text": "café 🎉 \u2028 \x01",
        "ключ": [1.5, None, True],
    }
    key = "é" * 255
    correlation_id = ("aZ09._:-" * 16)[:128]
    saga_uuid = uuid.uuid4()
    with Session(sync_engine) as session, SagaContextManager.scope(correlation_id):
        saga_id = start_saga(session, HostileSaga, context, idempotency_key=key)
        by_uuid = outbox.add(session, "t" * 249, context, key="ü" * 255, saga_id=saga_uuid)
        braced = outbox.add(session, "t", {}, saga_id="{" + saga_id.upper() + "}")
        session.commit()
    with sync_engine.connect() as connection:
        saga = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
        events = {row.id: row for row in connection.execute(sa.select(outbox_table)).fetchall()}
    assert saga.context == context
    assert saga.idempotency_key == key
    assert saga.correlation_id == correlation_id
    assert events[by_uuid].payload == context
    assert events[by_uuid].key == "ü" * 255
    assert events[by_uuid].topic == "t" * 249
    assert events[by_uuid].saga_id == str(saga_uuid)
    assert events[braced].saga_id == saga_id, "stored in canonical form"
    assert events[by_uuid].headers == {"correlation-id": correlation_id}


async def test_an_async_session_refuses_the_same_input(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    async with AsyncSession(async_engine) as session:
        start_saga(session, HostileSaga, {"ok": True})
        with pytest.raises(InvalidContextError, match="idempotency_key contains a lone"):
            start_saga(session, HostileSaga, {}, idempotency_key="\ud800")
        with pytest.raises(InvalidContextError, match="saga_id must be a saga's UUID"):
            outbox.add(session, "t", {}, saga_id="nope")
        with pytest.raises(InvalidContextError, match=r"context\['n'\] is an integer"):
            start_saga(session, HostileSaga, {"n": -(10**MAX_INT_DIGITS)})
        await session.commit()
    assert counts(sync_engine) == (1, 0)


async def test_a_step_result_that_could_not_be_stored_fails_its_saga_only(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    """A step returning a lone surrogate, a huge integer, a cycle or a too deep document
    fails (and is compensated) with the cause named; sagas group-committed with it in the
    same batches complete."""
    engine = SagaEngine(AsyncSagaStore(async_engine))
    modes = ["surrogate", "huge", "cycle", "deep"]
    results = await asyncio.gather(
        *(
            engine.run(HostileSaga().definition, {"mode": mode}, saga_id=str(uuid.uuid4()))
            for mode in [*modes, *["fine"] * 8]
        )
    )
    bad, good = results[: len(modes)], results[len(modes) :]
    assert [r.status for r in good] == [SagaStatus.COMPLETED] * 8
    assert [r.status for r in bad] == [SagaStatus.COMPENSATED] * len(modes)
    with sync_engine.connect() as connection:
        errors = {
            row.saga_id: row.error
            for row in connection.execute(
                sa.select(saga_steps).where(saga_steps.c.name == "answer")
            )
        }
        statuses = dict(connection.execute(sa.select(sagas.c.id, sagas.c.status)).all())
    expected = {
        "surrogate": "result of step 'answer'['answer'] contains a lone surrogate '\\udc80'",
        "huge": "result of step 'answer'['answer'] is an integer of more than",
        "cycle": "result of step 'answer'['answer']['again'] is a container that contains",
        "deep": f"nests deeper than {MAX_DEPTH} levels",
    }
    for mode, result in zip(modes, bad, strict=True):
        assert expected[mode] in (errors[result.saga_id] or ""), (mode, errors[result.saga_id])
        assert statuses[result.saga_id] == "compensated"
    assert all(statuses[r.saga_id] == "completed" for r in good)


async def test_the_longest_saga_and_step_names_are_stored(
    async_engine: AsyncEngine, sync_engine: sa.Engine
) -> None:
    engine = SagaEngine(AsyncSagaStore(async_engine))
    result = await engine.run(LongNamesSaga().definition, {}, saga_id=str(uuid.uuid4()))
    assert result.status is SagaStatus.COMPLETED
    with sync_engine.connect() as connection:
        names = set(
            connection.scalars(
                sa.select(saga_steps.c.name).where(saga_steps.c.saga_id == result.saga_id)
            )
        )
        saga_name = connection.scalar(sa.select(sagas.c.name).where(sagas.c.id == result.saga_id))
    assert names == {LONG_NAME, "ü" * MAX_NAME_LENGTH}
    assert saga_name == "l" * MAX_NAME_LENGTH
    with Session(sync_engine) as session:
        start_saga(session, LongNamesSaga, {}, idempotency_key="long")
        session.commit()
    assert counts(sync_engine) == (2, 0)
