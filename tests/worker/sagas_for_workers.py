"""Sagas the worker tests run, importable by worker subprocesses (`--import`).

Every step appends a row to `app_step_runs` through its own transaction, so tests can
count how many times each step of each saga ran, in-process or across processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import Saga, action, compensate, outbox

app_metadata = sa.MetaData()
step_runs = sa.Table(
    "app_step_runs",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("step", sa.String(50), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
payments = sa.Table(
    "app_payments",
    app_metadata,
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("amount", sa.Integer, nullable=False),
)


def record_run(session: Session, ctx: Any, step: str) -> None:
    session.execute(sa.insert(step_runs).values(n=ctx["n"], step=step, pid=os.getpid()))


class ThreeStepSaga(Saga):
    """reserve -> charge (transactional, sync) -> ship (transactional, async)."""

    saga_name = "worker-three-step"

    @action("reserve")
    def reserve(self, ctx: Any, session: Session) -> dict[str, Any]:
        record_run(session, ctx, "reserve")
        time.sleep(float(ctx.get("sleep", 0)))
        return {"reserved": True}

    @compensate("reserve")
    def release(self, ctx: Any) -> None:
        return None

    @action("charge", depends_on=["reserve"])
    def charge(self, ctx: Any, session: Session) -> dict[str, Any]:
        record_run(session, ctx, "charge")
        session.execute(sa.insert(payments).values(n=ctx["n"], amount=ctx.get("amount", 1)))
        outbox.add(session, "payments.charged", {"n": ctx["n"]}, key=str(ctx["n"]))
        if ctx.get("fail_charge"):
            raise RuntimeError("charge failed after writing")
        time.sleep(float(ctx.get("charge_sleep", 0)))
        return {"charged": True}

    @action("ship", depends_on=["charge"])
    async def ship(self, ctx: Any, session: Any) -> dict[str, Any]:
        await session.execute(sa.insert(step_runs).values(n=ctx["n"], step="ship", pid=os.getpid()))
        return {"shipped": True}
