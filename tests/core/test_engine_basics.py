"""Running sagas in memory: context handling, step kinds, results, concurrency."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import pytest

from sagaz import (
    InvalidContextError,
    MemoryJournal,
    Saga,
    SagaDefinitionError,
    SagaStatus,
    StepStatus,
    TransitionKind,
    action,
    compensate,
)


async def test_declarative_saga_completes_and_merges_results() -> None:
    seen: dict[str, Any] = {}

    class Order(Saga):
        saga_name = "basics-order"

        @action("reserve")
        async def reserve(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
            return {"reservation": f"R-{ctx['order_id']}"}

        @action("charge", depends_on=["reserve"])
        async def charge(self, ctx: Mapping[str, Any]) -> dict[str, Any]:
            seen["charge"] = dict(ctx)
            return {"payment": "P-1"}

        @action("ship", depends_on=["charge"])
        def ship(self, ctx: Mapping[str, Any]) -> None:
            seen["ship"] = dict(ctx)

    result = await Order().run({"order_id": 7})

    assert result.status is SagaStatus.COMPLETED
    assert result.succeeded
    assert result.error is None
    assert result.errors == []
    assert seen["charge"] == {"order_id": 7, "reservation": "R-7"}
    assert seen["ship"] == {"order_id": 7, "reservation": "R-7", "payment": "P-1"}
    assert result.context == {"order_id": 7, "reservation": "R-7", "payment": "P-1"}
    assert result.saga_name == "basics-order"
    assert [s.status for s in result.steps.values()] == [StepStatus.COMPLETED] * 3
    assert result.step("reserve").result == {"reservation": "R-7"}
    assert result.step("ship").result == {}


async def test_result_fields_and_timings() -> None:
    async def step(ctx: Mapping[str, Any]) -> dict[str, int]:
        await asyncio.sleep(0.01)
        return {"n": 1}

    saga = Saga(name="basics-fields").add_step("only", step)
    result = await saga.run({"a": 1}, saga_id="fixed-id")

    assert result.saga_id == "fixed-id"
    assert result.saga_name == "basics-fields"
    assert isinstance(result.started_at, datetime)
    assert result.started_at <= result.finished_at
    assert result.duration_seconds >= 0.01
    outcome = result.step("only")
    assert outcome.name == "only"
    assert outcome.attempts == 1
    assert outcome.started_at is not None
    assert outcome.finished_at is not None
    assert outcome.duration_seconds is not None
    assert outcome.duration_seconds >= 0.01
    assert outcome.error is None
    assert outcome.compensation_error is None
    assert result.correlation_id is None


async def test_generated_saga_ids_are_unique() -> None:
    saga = Saga(name="basics-ids").add_step("a", lambda ctx: None)
    first = await saga.run()
    second = await saga.run()
    assert first.saga_id != second.saga_id
    assert first.context == {}


async def test_context_passed_to_steps_is_read_only() -> None:
    async def mutate(ctx: Any) -> None:
        ctx["x"] = 2

    saga = Saga(name="basics-readonly").add_step("mutate", mutate)
    original = {"x": 1}
    result = await saga.run(original)

    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "TypeError" in result.error
    assert original == {"x": 1}
    assert result.context == {"x": 1}


async def test_caller_context_is_copied_not_mutated() -> None:
    saga = Saga(name="basics-copy").add_step("a", lambda ctx: {"added": True})
    original = {"x": 1}
    result = await saga.run(original)
    assert result.context == {"x": 1, "added": True}
    assert original == {"x": 1}


async def test_later_results_override_earlier_keys() -> None:
    saga = (
        Saga(name="basics-override")
        .add_step("a", lambda ctx: {"value": "a"})
        .add_step("b", lambda ctx: {"value": ctx["value"] + "b"})
    )
    result = await saga.run({"value": ""})
    assert result.context["value"] == "ab"


async def test_every_kind_of_callable_is_a_step() -> None:
    calls: list[str] = []

    def plain(ctx: Mapping[str, Any], *, tag: str) -> dict[str, str]:
        calls.append(f"{tag}:{threading.current_thread() is threading.main_thread()}")
        return {tag: "done"}

    async def coroutine(ctx: Mapping[str, Any], *, tag: str) -> dict[str, str]:
        calls.append(f"{tag}:{threading.current_thread() is threading.main_thread()}")
        return {tag: "done"}

    class AsyncCallable:
        async def __call__(self, ctx: Mapping[str, Any]) -> dict[str, str]:
            calls.append(f"obj:{threading.current_thread() is threading.main_thread()}")
            return {"obj": "done"}

    saga = (
        Saga(name="basics-callables")
        .add_step("plain", functools.partial(plain, tag="plain"))
        .add_step("coro", functools.partial(coroutine, tag="coro"))
        .add_step("obj", AsyncCallable())
        .add_step("lambda", lambda ctx: {"lambda": "done"})
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert result.context == {"plain": "done", "coro": "done", "obj": "done", "lambda": "done"}
    # plain functions run in a worker thread, coroutines on the loop's (main) thread
    assert calls == ["plain:False", "coro:True", "obj:True"]


async def test_step_returning_a_non_mapping_fails_and_names_the_step() -> None:
    undone: list[str] = []

    async def undo(ctx: Mapping[str, Any]) -> None:
        undone.append("first")

    saga = (
        Saga(name="basics-nonmapping")
        .add_step("first", lambda ctx: None, undo)
        .add_step("second", lambda ctx: [1, 2], max_retries=3, retry_backoff=0.01)
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPENSATED
    assert result.error is not None
    assert "step 'second'" in result.error
    assert "returned a list" in result.error
    assert result.step("second").attempts == 1, "an invalid result is not retried"
    assert undone == ["first"]


async def test_step_returning_non_json_fails_naming_step_and_key() -> None:
    journal = MemoryJournal()

    async def bad(ctx: Mapping[str, Any]) -> dict[str, Any]:
        return {"ok": 1, "when": datetime(2024, 1, 1)}

    saga = Saga(name="basics-nonjson").add_step("bad", bad, max_retries=2, retry_backoff=0.01)
    result = await saga.run(journal=journal)

    assert result.status is SagaStatus.COMPENSATED
    assert result.step("bad").status is StepStatus.FAILED
    assert result.step("bad").attempts == 1
    error = result.step("bad").error
    assert error is not None
    assert "InvalidContextError" in error
    assert "result of step 'bad'['when']" in error
    assert "datetime" in error
    assert "when" not in result.context
    completed = [t for t in journal.transitions if t.kind is TransitionKind.STEP_COMPLETED]
    assert completed == []


@pytest.mark.parametrize(
    ("context", "path"),
    [
        ({"order": object()}, "context['order']"),
        ({"order": {"at": datetime(2024, 1, 1)}}, "context['order']['at']"),
        ({"items": [1, 2, {3}]}, "context['items'][2]"),
        ({"ratio": float("nan")}, "context['ratio']"),
        ({"nested": {1: "int key"}}, "context['nested']"),
    ],
)
async def test_non_json_context_is_refused_before_anything_runs(
    context: dict[str, Any], path: str
) -> None:
    ran: list[str] = []
    journal = MemoryJournal()
    saga = Saga(name="basics-badctx").add_step("a", lambda ctx: ran.append("a"))

    with pytest.raises(InvalidContextError) as caught:
        await saga.run(context, journal=journal)

    assert path in str(caught.value)
    assert ran == []
    assert journal.transitions == []


async def test_context_must_be_a_mapping() -> None:
    saga = Saga(name="basics-ctxtype").add_step("a", lambda ctx: None)
    with pytest.raises(InvalidContextError, match="context must be a mapping"):
        await saga.run([("a", 1)])  # type: ignore[arg-type]


async def test_running_a_saga_without_steps_is_a_definition_error() -> None:
    with pytest.raises(SagaDefinitionError, match="saga 'basics-empty' has no steps"):
        await Saga(name="basics-empty").run({})


async def test_independent_steps_run_concurrently() -> None:
    both_started = asyncio.Barrier(2)

    async def left(ctx: Mapping[str, Any]) -> None:
        async with asyncio.timeout(2):
            await both_started.wait()

    async def right(ctx: Mapping[str, Any]) -> None:
        async with asyncio.timeout(2):
            await both_started.wait()

    saga = (
        Saga(name="basics-parallel")
        .add_step("left", left, depends_on=[])
        .add_step("right", right, depends_on=[])
    )
    result = await saga.run()
    assert result.status is SagaStatus.COMPLETED, result.errors


async def test_a_sync_step_does_not_block_a_concurrent_async_step() -> None:
    """The plain def step waits (in its thread) for an event only the async step sets.

    If the sync step ran on the event loop, the async step could not run and the sync
    step would give up after its wait and fail the saga.
    """
    released = threading.Event()
    order: list[str] = []

    def blocking(ctx: Mapping[str, Any]) -> dict[str, bool]:
        if not released.wait(timeout=5):
            raise RuntimeError("the async step never ran: the event loop was blocked")
        order.append("sync done")
        return {"sync": True}

    async def cooperative(ctx: Mapping[str, Any]) -> dict[str, bool]:
        for _ in range(3):
            await asyncio.sleep(0.01)
        order.append("async done")
        released.set()
        return {"async": True}

    saga = (
        Saga(name="basics-sync-async")
        .add_step("blocking", blocking, depends_on=[])
        .add_step("cooperative", cooperative, depends_on=[])
    )
    result = await saga.run()

    assert result.status is SagaStatus.COMPLETED, result.errors
    assert order == ["async done", "sync done"]
    assert result.context == {"sync": True, "async": True}


async def test_imperative_steps_follow_the_previous_one_by_default() -> None:
    events: list[str] = []

    async def step(name: str, ctx: Mapping[str, Any]) -> None:
        events.append(f"start {name}")
        await asyncio.sleep(0.01)
        events.append(f"end {name}")

    saga = (
        Saga(name="basics-chain")
        .add_step("a", functools.partial(step, "a"))
        .add_step("b", functools.partial(step, "b"))
        .add_step("c", functools.partial(step, "c"))
    )
    assert [s.depends_on for s in saga.definition.steps] == [(), ("a",), ("b",)]
    await saga.run()
    assert events == ["start a", "end a", "start b", "end b", "start c", "end c"]


async def test_declarative_steps_without_depends_on_are_roots() -> None:
    class Roots(Saga):
        saga_name = "basics-roots"

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> None: ...

        @action("b")
        async def b(self, ctx: Mapping[str, Any]) -> None: ...

    assert [s.depends_on for s in Roots().definition.steps] == [(), ()]


async def test_declarative_instances_bind_self() -> None:
    class WithState(Saga):
        saga_name = "basics-self"

        def __init__(self, prefix: str) -> None:
            super().__init__()
            self.prefix = prefix

        @action("a")
        async def a(self, ctx: Mapping[str, Any]) -> dict[str, str]:
            return {"value": self.prefix + ctx["x"]}

        @compensate("a")
        async def undo_a(self, ctx: Mapping[str, Any]) -> None: ...

    first = await WithState("1-").run({"x": "a"})
    second = await WithState("2-").run({"x": "a"})
    assert first.context["value"] == "1-a"
    assert second.context["value"] == "2-a"


async def test_a_plain_function_returning_a_coroutine_has_it_awaited() -> None:
    done: list[str] = []

    async def reserve(ctx: Mapping[str, Any], amount: int) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"reserved": amount}

    async def release(ctx: Mapping[str, Any]) -> None:
        done.append("released")

    async def boom(ctx: Mapping[str, Any]) -> None:
        raise RuntimeError("boom")

    saga = (
        Saga(name="basics-lambda")
        .add_step("reserve", lambda ctx: reserve(ctx, 3), lambda ctx: release(ctx))
        .add_step("boom", boom)
    )
    result = await saga.run()

    assert result.context == {"reserved": 3}
    assert result.status is SagaStatus.COMPENSATED
    assert done == ["released"]
