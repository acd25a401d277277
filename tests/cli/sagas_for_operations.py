"""Sagas the inspect-and-repair tests run through an in-process worker.

Every action and compensation appends to `RUNS`, so a test sees what ran and how often.
`GatedSaga`'s step "b" waits on `GATE["open"]` (an asyncio.Event the test creates) after
setting `GATE["entered"]`. `BrittleUndoSaga`'s compensation fails while `BROKEN["undo"]`
is true (its cause, which the test then fixes)."""

from __future__ import annotations

import asyncio
from typing import Any

from sagaz import Saga, action, compensate

RUNS: list[str] = []
GATE: dict[str, asyncio.Event] = {}
BROKEN = {"undo": True}


class GatedSaga(Saga):
    saga_name = "ops-gated"

    @action("a")
    async def a(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("a")
        return {"a": 1}

    @compensate("a")
    async def undo_a(self, ctx: Any) -> None:
        RUNS.append("undo a")

    @action("b", depends_on=["a"])
    async def b(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("b")
        GATE["entered"].set()
        await GATE["open"].wait()
        return {"b": 1}

    @compensate("b")
    async def undo_b(self, ctx: Any) -> None:
        RUNS.append("undo b")

    @action("c", depends_on=["b"])
    async def c(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("c")
        return {"c": 1}

    @compensate("c")
    async def undo_c(self, ctx: Any) -> None:
        RUNS.append("undo c")


class BrittleUndoSaga(Saga):
    saga_name = "ops-brittle-undo"

    @action("reserve", compensation_retries=0)
    async def reserve(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("reserve")
        return {"reserved": True}

    @compensate("reserve")
    async def release(self, ctx: Any) -> None:
        if BROKEN["undo"]:
            raise RuntimeError("the stock service is down")
        RUNS.append("release")

    @action("charge", depends_on=["reserve"])
    async def charge(self, ctx: Any) -> None:
        raise RuntimeError("card declined")


class TwoStepSaga(Saga):
    saga_name = "ops-two-step"

    @action("first")
    async def first(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("first")
        return {"first": 1}

    @action("second", depends_on=["first"])
    async def second(self, ctx: Any) -> dict[str, Any]:
        RUNS.append("second")
        return {"second": ctx["first"] + 1}
