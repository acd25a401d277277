"""The sagaz demo, on the embedded SQLite store.

1. Migrate a fresh SQLite database (a temporary file; nothing is written to the current
   directory unless you pass --database PATH).
2. Two "requests" each write an order row, start an OrderSaga and add an outbox event in
   ONE transaction; a third request fails and rolls back - and leaves no trace.
3. A saga worker runs the sagas: one completes, one fails at the card charge and is
   compensated (its stock reservation is released).
4. The outbox relay publishes the committed events (to the in-memory broker).

Run with ``scripts/demo`` (installs sagaz into .venv first) or ``python examples/demo.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from sagaz import Saga, action, compensate, outbox, start_saga
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.engines import create_async_engine, create_engine
from sagaz.store.migrations import upgrade
from sagaz.store.stores import SagaStore
from sagaz.worker import SagaWorker


class Base(DeclarativeBase):
    pass


class Order(Base):
    """The application's own table."""

    __tablename__ = "orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]


class OrderSaga(Saga):
    saga_name = "demo-order"

    @action("reserve_stock")
    async def reserve_stock(self, ctx: Any) -> dict[str, Any]:
        print(f"    order {ctx['order_id']}: stock reserved")
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve_stock")
    async def release_stock(self, ctx: Any) -> None:
        print(f"    order {ctx['order_id']}: undo - released reservation {ctx['reservation']}")

    @action("charge_card", depends_on=["reserve_stock"], max_retries=1, retry_backoff=0.01)
    def charge_card(self, ctx: Any) -> dict[str, Any]:  # a plain def step runs in a thread
        if ctx["amount"] > 100:
            print(f"    order {ctx['order_id']}: card declined for {ctx['amount']}")
            raise RuntimeError(f"card declined for {ctx['amount']}")
        print(f"    order {ctx['order_id']}: card charged {ctx['amount']}")
        return {"payment": f"P-{ctx['order_id']}"}

    @compensate("charge_card")
    def refund_card(self, ctx: Any) -> None:
        print(f"    order {ctx['order_id']}: undo - refunded {ctx['payment']}")

    @action("ship", depends_on=["charge_card"])
    async def ship(self, ctx: Any) -> dict[str, Any]:
        print(f"    order {ctx['order_id']}: shipped")
        return {"tracking": f"T-{ctx['order_id']}"}


def place_order(session: Session, order_id: int, amount: int) -> str:
    """What a web request does: its own row, the saga and the event, one transaction."""
    session.add(Order(id=order_id, amount=amount))
    saga_id = start_saga(
        session, OrderSaga, {"order_id": order_id, "amount": amount},
        idempotency_key=f"order-{order_id}",
    )  # fmt: skip
    outbox.add(
        session, "orders.placed", {"order_id": order_id, "amount": amount}, key=str(order_id)
    )
    return saga_id


def all_finished(engine: sa.Engine) -> bool:
    return all(saga.status.is_terminal for saga in SagaStore(engine).list())


async def main(database: Path) -> None:
    url = f"sqlite:///{database}"
    print(f"1. Migrating {database}")
    upgrade(url)
    engine = create_engine(url)
    Base.metadata.create_all(engine)

    print("2. Three requests")
    with Session(engine) as session:
        place_order(session, 1, amount=40)
        session.commit()
    with Session(engine) as session:
        place_order(session, 2, amount=500)
        session.commit()
    try:
        with Session(engine) as session, session.begin():
            place_order(session, 3, amount=10)
            raise RuntimeError("the request failed after starting its saga")
    except RuntimeError as error:
        print(f"   request 3 rolled back ({error})")
    with engine.connect() as connection:
        orders = connection.scalar(sa.select(sa.func.count()).select_from(Order))
    sagas = SagaStore(engine).list()
    print(f"   committed: {orders} orders, {len(sagas)} sagas (request 3 left nothing)")

    print("3. The saga worker runs them")
    async_engine = create_async_engine(url)
    worker = SagaWorker(async_engine, poll_interval=0.05)
    running = asyncio.create_task(worker.run_until_stopped())
    # Poll from a thread: a blocking SQLite call on the event loop's thread could wait for
    # a write lock that only the loop (the worker) can release.
    while not await asyncio.to_thread(all_finished, engine):
        await asyncio.sleep(0.05)
    worker.stop()
    await running
    for saga in sorted(SagaStore(engine).list(), key=lambda s: s.context["order_id"]):
        stored = SagaStore(engine).get(saga.saga_id)
        assert stored is not None
        steps = ", ".join(
            f"{step.name}={stored.steps[step.name].status.value}"
            for step in OrderSaga().definition.steps
            if step.name in stored.steps
        )
        print(f"   order {saga.context['order_id']}: {saga.status.value.upper()} ({steps})")
        if saga.error:
            print(f"     first error: {saga.error}")

    print("4. The outbox relay publishes the committed events")
    broker = InMemoryBroker()
    relay = OutboxRelay(async_engine, broker, listen=False)
    await relay.relay_once()
    for message in broker.published:
        print(f"   {message.topic} key={message.key} id={message.id[:8]} payload={message.payload}")
    await worker.store.close()
    await async_engine.dispose()
    engine.dispose()
    print()
    print("The saga as a Mermaid graph:")
    print(OrderSaga().to_mermaid())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database", type=Path, help="SQLite file (default: a temporary one)")
    arguments = parser.parse_args()
    if arguments.database:
        asyncio.run(main(arguments.database))
    else:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(main(Path(directory) / "sagaz-demo.db"))
