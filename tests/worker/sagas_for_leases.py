"""Sagas of the lease and give-up tests, importable by worker subprocesses (`--import`).

Their steps write what they do into `app_effects` through a connection of their own
(`ctx["effects_url"]`), committed at once, so the tests can order the effects of two
workers: the row id is the order in which they were written.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from functools import cache, partial
from typing import Any

import sqlalchemy as sa

import sagaz
from sagaz import Saga, action, compensate

app_metadata = sa.MetaData()
effects = sa.Table(
    "app_effects",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("step", sa.String(50), nullable=False),
    sa.Column("kind", sa.String(50), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("fence", sa.Integer, nullable=False),
)


@cache
def _engine(url: str) -> sa.Engine:
    return sa.create_engine(url, poolclass=sa.NullPool)


def write(ctx: Mapping[str, Any], step: str, kind: str) -> None:
    fence = sagaz.current_run().fence
    with _engine(ctx["effects_url"]).begin() as connection:
        connection.execute(
            sa.insert(effects).values(step=step, kind=kind, pid=os.getpid(), fence=fence)
        )


def count(ctx: Mapping[str, Any], **where: str) -> int:
    query = sa.select(sa.func.count()).select_from(effects)
    for column, value in where.items():
        query = query.where(effects.c[column] == value)
    with _engine(ctx["effects_url"]).connect() as connection:
        return connection.scalar(query) or 0


class StallingSaga(Saga):
    """`act` (plain, irreversible effect guarded by `lease_held()`), then `fail`, which
    fails: `act` is compensated. The first run of `act` sleeps (the test pauses its
    process there)."""

    saga_name = "lease-stalling"

    @action("act")
    def act(self, ctx: Mapping[str, Any]) -> None:
        write(ctx, "act", "entered")
        if sagaz.current_run().fence == 1:
            time.sleep(float(ctx.get("sleep", 3)))
        # The irreversible call: only while the lease is ours.
        write(ctx, "act", "effect" if sagaz.current_run().lease_held() else "skipped")

    @compensate("act")
    def undo_act(self, ctx: Mapping[str, Any]) -> None:
        write(ctx, "act", "undo")

    @action("fail", depends_on=["act"])
    def fail(self, ctx: Mapping[str, Any]) -> None:
        write(ctx, "fail", "entered")
        raise RuntimeError("fails, so that act is compensated")


def _slow_first_time(ctx: Mapping[str, Any], *, step: str) -> None:
    write(ctx, step, "entered")
    if count(ctx, step=step, kind="entered") == 1:
        time.sleep(60)  # the test kills the worker in here


def _six_steps() -> Saga:
    """Six steps; the first run of each sleeps (its worker is killed there), the next
    one completes it: every claim but the last ends by a kill, each after progress."""
    saga = Saga(name="lease-six-steps")
    for n in range(1, 7):
        saga.add_step(f"s{n}", partial(_slow_first_time, step=f"s{n}"))
    return saga.register()


SixStepSaga = _six_steps()


class CrashingSaga(Saga):
    """`a` completes; `b` kills its worker process every time. Compensating `a` kills the
    worker too until the test writes an `allow-undo` row (the operator's fix)."""

    saga_name = "lease-crashing"

    @action("a")
    def a(self, ctx: Mapping[str, Any]) -> None:
        write(ctx, "a", "effect")

    @compensate("a")
    def undo_a(self, ctx: Mapping[str, Any]) -> None:
        if not count(ctx, kind="allow-undo"):
            write(ctx, "a", "undo-crash")
            os._exit(4)
        write(ctx, "a", "undo")

    @action("b", depends_on=["a"])
    def b(self, ctx: Mapping[str, Any]) -> None:
        write(ctx, "b", "crash")
        os._exit(3)
