"""The saga the chaos test runs, importable by `sagaz worker --import` subprocesses.

    reserve (plain, compensated by release) -> charge (transactional) -> confirm (plain)

* `reserve` is an ordinary step with a side effect outside sagaz's database: after some
  work it writes a row to the *effect ledger*, a table on another PostgreSQL server (the
  stable main one, standing for a downstream service). `release`, its compensation,
  writes a row there too. Both take their number from one sequence of that database, so
  the ledger shows whether an effect was written after its compensation ("do after undo").
* `charge` takes a `session`: its effect row (`chaos_tx_effects`) and an outbox event
  commit in the same transaction as its completion record, so each exists exactly once.
* `confirm` fails on purpose for the sagas started with `doom: true`, which must end
  COMPENSATED; the others must end COMPLETED.

The effect ledger is reached through CHAOS_LEDGER_URL and CHAOS_LEDGER_SCHEMA, which the
test sets for the worker processes (`effect_ledger_env`).
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import sqlalchemy as sa

import sagaz
from sagaz import Saga, action, compensate, outbox

SAGA_NAME = "chaos-order"
LEDGER_URL = "CHAOS_LEDGER_URL"
LEDGER_SCHEMA = "CHAOS_LEDGER_SCHEMA"
#: Seconds `reserve` works before writing its effect: the window in which a paused
#: worker can lose its lease with the effect still to be written.
RESERVE_SECONDS = 1.0
CONFIRM_SECONDS = 0.3

app_metadata = sa.MetaData()
orders = sa.Table(
    "chaos_orders",
    app_metadata,
    sa.Column("n", sa.Integer, primary_key=True),
    sa.Column("doom", sa.Boolean, nullable=False),
)
#: The producer's batches: a batch number commits once (its retry after an unknown
#: commit outcome finds it there and skips it).
batches = sa.Table("chaos_batches", app_metadata, sa.Column("batch", sa.Integer, primary_key=True))
#: No unique constraint on purpose: a doubled transactional effect must be countable.
tx_effects = sa.Table(
    "chaos_tx_effects",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("n", sa.Integer, nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
)
#: What the consumer processed (same transaction as its inbox row). No unique constraint.
consumed = sa.Table(
    "chaos_consumed",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(64), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False),
    sa.Column("at", sa.DateTime(timezone=True), server_default=sa.func.clock_timestamp()),
)
#: Repeats the consumer's inbox skipped (a redelivery of a message already processed).
inbox_skips = sa.Table(
    "chaos_inbox_skips",
    app_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("message_id", sa.String(64), nullable=False),
)


def effect_ledger_ddl(schema: str) -> list[str]:
    """The effect ledger's tables, in `schema` of the stable database."""
    sequence = f'"{schema}".chaos_ledger_seq'
    return [
        f"CREATE SEQUENCE {sequence}",
        *(
            f'CREATE TABLE "{schema}".{table} (id serial PRIMARY KEY, n int NOT NULL, '
            f"pid int NOT NULL, seq bigint NOT NULL DEFAULT nextval('{sequence}'), "
            "at timestamptz NOT NULL DEFAULT clock_timestamp())"
            for table in ("chaos_reserve_starts", "chaos_plain_effects", "chaos_compensations")
        ),
    ]


def effect_ledger_env(sync_url: str, schema: str) -> dict[str, str]:
    return {LEDGER_URL: sync_url, LEDGER_SCHEMA: schema}


_ledger: sa.Engine | None = None


def _write(table: str, n: int) -> None:
    global _ledger
    if _ledger is None:
        _ledger = sa.create_engine(os.environ[LEDGER_URL], pool_size=5, max_overflow=20)
    schema = os.environ[LEDGER_SCHEMA]
    with _ledger.begin() as connection:
        connection.execute(
            sa.text(f'INSERT INTO "{schema}".{table} (n, pid) VALUES (:n, :pid)'),
            {"n": n, "pid": os.getpid()},
        )


async def record(table: str, n: int) -> None:
    """Write one row to the effect ledger, committed at once on a connection of its own.

    Like a call to a downstream service, it completes once started: it runs in a thread,
    so cancelling the step (a worker that noticed it lost the lease) does not undo it.
    The ledger's server is not disturbed by the test, so an error is a harness problem
    and propagates.
    """
    await asyncio.to_thread(_write, table, n)


def still_holds_lease(ctx: Any) -> bool:
    """Whether this run still holds the saga's lease, on the worker's own monotonic clock
    (`sagaz.current_run().lease_held()`): a worker resumed after a pause past its lease
    writes no effect the new owner may already have compensated."""
    return sagaz.current_run().lease_held()


class ChaosOrderSaga(Saga):
    saga_name = SAGA_NAME

    @action("reserve")
    async def reserve(self, ctx: Any) -> dict[str, Any]:
        await record("chaos_reserve_starts", ctx["n"])  # lets the test aim its pauses
        await asyncio.sleep(RESERVE_SECONDS)
        if still_holds_lease(ctx):
            await record("chaos_plain_effects", ctx["n"])
        return {"reserved": True}

    @compensate("reserve")
    async def release(self, ctx: Any) -> None:
        await record("chaos_compensations", ctx["n"])

    @action("charge", depends_on=["reserve"])
    async def charge(self, ctx: Any, session: Any) -> dict[str, Any]:
        await session.execute(sa.insert(tx_effects).values(n=ctx["n"], pid=os.getpid()))
        outbox.add(session, ctx["topic"], {"n": ctx["n"], "charged": True}, key=f"order-{ctx['n']}")
        return {"charged": True}

    @action("confirm", depends_on=["charge"])
    async def confirm(self, ctx: Any) -> dict[str, Any]:
        await asyncio.sleep(CONFIRM_SECONDS)
        if ctx.get("doom"):
            raise RuntimeError(f"order {ctx['n']} is refused (doomed on purpose)")
        return {"confirmed": True}
