"""Request context: correlation-id scopes, and the sagas started inside them."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import pytest

from sagaz import (
    InvalidContextError,
    LeaseLostError,
    MemoryJournal,
    Saga,
    SagaContextManager,
    TransitionKind,
    generate_correlation_id,
)
from sagaz.context import (
    MAX_CORRELATION_ID_LENGTH,
    check_correlation_id,
    current_correlation_id,
    is_valid_correlation_id,
)
from sagaz.store.schema import sagas


def test_no_context_outside_a_scope() -> None:
    assert SagaContextManager.get() is None
    assert current_correlation_id() is None


def test_generate_correlation_id() -> None:
    ids = {generate_correlation_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)


def test_scope_sets_and_restores() -> None:
    with SagaContextManager.scope("outer", user="ana") as outer:
        assert outer.correlation_id == "outer"
        assert outer.metadata == {"user": "ana"}
        assert SagaContextManager.get() is outer
        with SagaContextManager.scope("inner") as inner:
            assert current_correlation_id() == "inner"
            assert inner.metadata == {}
        assert SagaContextManager.get() is outer
    assert SagaContextManager.get() is None


def test_scope_restores_after_an_exception() -> None:
    with pytest.raises(RuntimeError), SagaContextManager.scope("doomed"):
        raise RuntimeError("request failed")
    assert current_correlation_id() is None


def test_scope_generates_an_id_when_none_is_given() -> None:
    with SagaContextManager.scope() as context:
        assert re.fullmatch(r"[0-9a-f]{32}", context.correlation_id)


def test_metadata_is_read_only() -> None:
    metadata = {"tenant": "t1"}
    with SagaContextManager.scope("c", **metadata) as context:
        with pytest.raises(TypeError):
            context.metadata["tenant"] = "t2"  # type: ignore[index]
        metadata["tenant"] = "changed"
        assert context.metadata["tenant"] == "t1"


def test_set_and_reset() -> None:
    token = SagaContextManager.set("manual", source="job")
    try:
        context = SagaContextManager.get()
        assert context is not None
        assert context.correlation_id == "manual"
        assert context.metadata == {"source": "job"}
    finally:
        SagaContextManager.reset(token)
    assert SagaContextManager.get() is None


async def test_scopes_do_not_leak_between_concurrent_tasks() -> None:
    async def handle(correlation_id: str) -> str | None:
        with SagaContextManager.scope(correlation_id):
            await asyncio.sleep(0.01)
            return current_correlation_id()

    results = await asyncio.gather(*(handle(f"req-{n}") for n in range(5)))
    assert results == [f"req-{n}" for n in range(5)]
    assert current_correlation_id() is None


async def test_a_saga_started_in_a_scope_records_its_correlation_id() -> None:
    journal = MemoryJournal()
    seen_in_steps: list[str | None] = []

    async def async_step(ctx: Mapping[str, Any]) -> None:
        seen_in_steps.append(current_correlation_id())

    def thread_step(ctx: Mapping[str, Any]) -> None:
        seen_in_steps.append(current_correlation_id())

    saga = Saga(name="ctx-saga").add_step("a", async_step).add_step("b", thread_step)
    with SagaContextManager.scope("corr-123"):
        result = await saga.run(journal=journal, saga_id="c1")

    assert result.correlation_id == "corr-123"
    started = journal.transitions[0]
    assert started.kind is TransitionKind.SAGA_STARTED
    assert started.correlation_id == "corr-123"
    snapshot = await journal.load("c1")
    assert snapshot is not None
    assert snapshot.correlation_id == "corr-123"
    assert seen_in_steps == ["corr-123", "corr-123"], "steps, threads too, see the scope"


async def test_a_saga_outside_any_scope_has_no_correlation_id() -> None:
    journal = MemoryJournal()
    result = await Saga(name="ctx-none").add_step("a", lambda ctx: None).run(journal=journal)
    assert result.correlation_id is None
    assert journal.transitions[0].correlation_id is None


async def test_a_resumed_saga_keeps_its_original_correlation_id() -> None:
    journal = MemoryJournal()
    fence = journal.lease("c2", "worker-1")
    gate: list[str] = []

    async def lose_lease(ctx: Mapping[str, Any]) -> None:
        if not gate:
            gate.append("taken")
            journal.lease("c2", "worker-2")

    saga = Saga(name="ctx-resume").add_step("a", lose_lease)
    with (
        SagaContextManager.scope("original"),
        pytest.raises(LeaseLostError, match="leased to worker-2"),
    ):
        await saga.run(journal=journal, saga_id="c2", fence=fence)

    with SagaContextManager.scope("worker-scope"):
        result = await saga.run(
            journal=journal, saga_id="c2", fence=journal.lease("c2", "worker-3")
        )
    assert result.correlation_id == "original"


@pytest.mark.parametrize(
    ("correlation_id", "shown"),
    [
        ("x" * 129, "129 characters long"),
        ("", "''"),
        ("has space", "'has space'"),
        ("a\r\nInjected: 1", "'a\\r\\nInjected: 1'"),
        ("nul\x00", "'nul\\x00'"),
        ("caf\u00e9", "'café'"),
        ("\ud800", "'\\ud800'"),
        (42, "a value of type int"),
    ],
)
def test_a_bad_correlation_id_is_refused_where_it_is_set(correlation_id: Any, shown: str) -> None:
    rule = "correlation_id must be 1 to 128 characters of [A-Za-z0-9._:-]"
    with pytest.raises(InvalidContextError) as caught, SagaContextManager.scope(correlation_id):
        raise AssertionError("the block must not run")
    assert str(caught.value) == f"{rule}, got {shown}"
    with pytest.raises(InvalidContextError, match=re.escape(rule)):
        SagaContextManager.set(correlation_id)
    assert SagaContextManager.get() is None, "nothing was set"


def test_the_longest_and_most_varied_valid_correlation_id() -> None:
    valid = ("aZ09._:-" * 16)[:MAX_CORRELATION_ID_LENGTH]
    assert len(valid) == 128
    assert is_valid_correlation_id(valid)
    with SagaContextManager.scope(valid) as context:
        assert context.correlation_id == valid
    assert check_correlation_id("abc") == "abc"


def test_the_core_and_the_web_adapters_apply_the_same_rule() -> None:
    from sagaz.integrations import _base

    assert _base.MAX_CORRELATION_ID_LENGTH == MAX_CORRELATION_ID_LENGTH
    assert sagas.c.correlation_id.type.length == MAX_CORRELATION_ID_LENGTH  # type: ignore[attr-defined]
    samples = ["ok", "a" * 128, "a" * 129, "", "a b", "é", "a\n", "x:y.z-_", None, 7]
    for sample in samples:
        assert _base.is_valid_correlation_id(sample) == is_valid_correlation_id(sample), sample
    assert is_valid_correlation_id(_base.correlation_id_from("bad value\r\n"))
