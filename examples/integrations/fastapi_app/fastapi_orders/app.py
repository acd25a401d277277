"""The FastAPI application: ``uvicorn fastapi_orders.app:app``.

Configured from the environment: SAGAZ_DATABASE_URL (default: a SQLite file in the
temporary directory) and the other SAGAZ_* settings; ORDERS_IN_PROCESS_WORKER=1 also runs
the saga worker and outbox relay inside the web process (handy for a demo; production
runs ``sagaz worker``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncSession

from fastapi_orders.models import Base, Order
from fastapi_orders.sagas import OrderSaga
from sagaz import SagaConfig, outbox, start_saga
from sagaz.context import current_correlation_id
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    get_config,
    get_saga_session,
    health_router,
    run_saga_background,
)

DEFAULT_DATABASE_URL = f"sqlite:///{Path(tempfile.gettempdir()) / 'sagaz-fastapi-orders.db'}"

Session = Annotated[AsyncSession, Depends(get_saga_session)]


class OrderIn(BaseModel):
    item: str = Field(min_length=1, max_length=100)
    quantity: int = Field(gt=0, le=1000)
    unit_price_cents: int = Field(gt=0)


def create_app(
    config: SagaConfig | None = None, *, in_process_worker: bool | None = None
) -> FastAPI:
    if config is None:
        config = SagaConfig.from_env(
            database_url=os.environ.get("SAGAZ_DATABASE_URL") or DEFAULT_DATABASE_URL
        )
    if in_process_worker is None:
        in_process_worker = os.environ.get("ORDERS_IN_PROCESS_WORKER") == "1"

    @asynccontextmanager
    async def create_tables(app: FastAPI) -> AsyncIterator[None]:
        # The application's own table; sagaz's come from `sagaz db upgrade`.
        async with config.engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield

    app = FastAPI(
        title="Orders - sagaz + FastAPI",
        lifespan=create_lifespan(
            config,
            lifespan=create_tables,
            run_worker=in_process_worker,
            run_relay=in_process_worker,
        ),
    )
    app.add_middleware(SagaContextMiddleware)
    app.include_router(health_router)

    async def place(session: AsyncSession, body: OrderIn) -> Order:
        order = Order(
            item=body.item,
            quantity=body.quantity,
            total_cents=body.quantity * body.unit_price_cents,
        )
        session.add(order)
        await session.flush()  # assigns order.id
        return order

    def saga_context(order: Order) -> dict[str, Any]:
        return {"order_id": order.id, "item": order.item, "total_cents": order.total_cents}

    @app.post("/orders", status_code=201)
    async def create_order(body: OrderIn, session: Session) -> dict[str, Any]:
        """Order row, saga and event commit together - before this response is sent.
        A worker (`sagaz worker`) runs the saga."""
        order = await place(session, body)
        order.saga_id = start_saga(
            session, OrderSaga, saga_context(order), idempotency_key=f"order-{order.id}"
        )
        outbox.add(session, "orders.placed", saga_context(order), key=str(order.id))
        return {
            "order_id": order.id,
            "saga_id": order.saga_id,
            "correlation_id": current_correlation_id(),
        }

    @app.post("/orders/express", status_code=201)
    async def create_express_order(
        body: OrderIn, session: Session, background_tasks: BackgroundTasks
    ) -> dict[str, Any]:
        """Like POST /orders, but this process runs the saga right after the response
        (durably: if it dies, a worker finishes the saga)."""
        order = await place(session, body)
        order.saga_id = run_saga_background(
            background_tasks, OrderSaga, saga_context(order), session=session
        )
        outbox.add(session, "orders.placed", saga_context(order), key=str(order.id))
        return {"order_id": order.id, "saga_id": order.saga_id}

    @app.get("/orders/{order_id}")
    async def read_order(
        order_id: int, saga_config: Annotated[SagaConfig, Depends(get_config)]
    ) -> dict[str, Any]:
        # Read the order in a short session of its own, then the saga through the store
        # (its own connection): never hold a transaction open while the store reads -
        # on SQLite every transaction takes the database's write lock.
        async with AsyncSession(saga_config.engine) as session:
            order = await session.get(Order, order_id)
        if order is None:
            raise HTTPException(status_code=404, detail=f"no order {order_id}")
        saga = await saga_config.store.get(order.saga_id) if order.saga_id else None
        return {
            "order_id": order.id,
            "item": order.item,
            "total_cents": order.total_cents,
            "status": order.status,
            "saga": None
            if saga is None
            else {"id": saga.saga_id, "status": saga.status.value, "error": saga.error},
        }

    return app


app = create_app()
