"""A step that takes a `session` needs a database store: without one, `run` raises the
programming error instead of treating it as a step failure to retry and compensate."""

from __future__ import annotations

from typing import Any

import pytest

from sagaz import MemoryJournal, Saga, SagaDefinitionError


async def test_session_step_without_a_store_raises() -> None:
    compensated: list[str] = []

    async def first(ctx: Any) -> None:
        return None

    async def undo_first(ctx: Any) -> None:
        compensated.append("first")

    async def needs_session(ctx: Any, session: Any) -> None:
        raise AssertionError("must not run without a session")

    saga = (
        Saga(name="session-step-no-store")
        .add_step("first", first, undo_first)
        .add_step("tx", needs_session, max_retries=3)
    )
    assert saga.definition.step("tx").wants_session
    assert not saga.definition.step("first").wants_session
    with pytest.raises(SagaDefinitionError, match="takes a session"):
        await saga.run({}, journal=MemoryJournal())
    assert compensated == []
