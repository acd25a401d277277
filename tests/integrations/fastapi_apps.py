"""The FastAPI application the integration tests drive (built per test, on its config)."""

from collections.abc import AsyncIterator
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import BackgroundTasks, Depends, FastAPI, HTTPException
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from sagaz import SagaConfig, outbox, start_saga
from sagaz.integrations.fastapi import (
    SagaContextMiddleware,
    create_lifespan,
    get_config,
    get_saga_session,
    get_sync_saga_session,
    health_router,
    run_saga_background,
    saga_factory,
)
from tests.integrations.integration_helpers import IntegrationOrderSaga, order_lines, orders

SagaSession = Annotated[AsyncSession, Depends(get_saga_session)]


async def _misbehave(session: AsyncSession, mode: str) -> None:
    """What the endpoint does after starting its saga: nothing, raise, or queue a row
    that violates a deferred constraint (detected only by the commit)."""
    if mode == "raise":
        raise RuntimeError("the endpoint failed after starting its saga")
    if mode == "http":
        raise HTTPException(status_code=409, detail="conflict after starting the saga")
    if mode == "deferred":
        await session.execute(sa.insert(order_lines).values(order_id=999_999_999))


async def _app_session(
    config: Annotated[SagaConfig, Depends(get_config)],
) -> AsyncIterator[AsyncSession]:
    """An application's own session dependency in the default (request) scope: it
    commits after the response was sent."""
    async with AsyncSession(config.engine) as session:
        yield session
        await session.commit()


def build_app(config: SagaConfig, **lifespan_options: Any) -> FastAPI:
    app = FastAPI(lifespan=create_lifespan(config, **lifespan_options))
    app.add_middleware(SagaContextMiddleware)
    app.include_router(health_router)

    @app.post("/orders", status_code=201)
    async def create_order(
        session: SagaSession, item: str = "book", mode: str = "ok"
    ) -> dict[str, Any]:
        order_id = (
            await session.execute(sa.insert(orders).values(item=item).returning(orders.c.id))
        ).scalar_one()
        saga_id = start_saga(session, IntegrationOrderSaga, {"n": order_id})
        event_id = outbox.add(session, "orders.created", {"order_id": order_id}, key=str(order_id))
        await _misbehave(session, mode)
        return {"order_id": order_id, "saga_id": saga_id, "event_id": event_id, "ok": True}

    @app.post("/orders/background", status_code=202)
    async def create_order_in_background(
        session: SagaSession,
        background_tasks: BackgroundTasks,
        mode: str = "ok",
        fail: bool = False,
        sleep: float = 0.0,
        sleep_once: float = 0.0,
    ) -> dict[str, Any]:
        order_id = (
            await session.execute(sa.insert(orders).values(item="bg").returning(orders.c.id))
        ).scalar_one()
        context = {"n": order_id, "fail": fail, "sleep": sleep, "sleep_once": sleep_once}
        saga_id = run_saga_background(
            background_tasks, IntegrationOrderSaga, context, session=session
        )
        await _misbehave(session, mode)
        return {"order_id": order_id, "saga_id": saga_id}

    @app.post("/orders/background-own-transaction", status_code=202)
    async def background_in_own_transaction(
        background_tasks: BackgroundTasks, n: int = 0
    ) -> dict[str, Any]:
        saga_id = await run_saga_background(background_tasks, IntegrationOrderSaga, {"n": n})
        return {"saga_id": saga_id}

    @app.post("/orders/background-app-session", status_code=202)
    async def background_with_app_session(
        background_tasks: BackgroundTasks,
        session: Annotated[AsyncSession, Depends(_app_session)],
    ) -> dict[str, Any]:
        order_id = (
            await session.execute(sa.insert(orders).values(item="app").returning(orders.c.id))
        ).scalar_one()
        saga_id = run_saga_background(
            background_tasks, IntegrationOrderSaga, {"n": order_id}, session=session
        )
        return {"saga_id": saga_id}

    @app.post("/sync/orders", status_code=201)
    def create_order_sync(
        session: Annotated[Session, Depends(get_sync_saga_session)],
        background_tasks: BackgroundTasks,
        mode: str = "ok",
    ) -> dict[str, Any]:
        order_id = session.execute(
            sa.insert(orders).values(item="sync").returning(orders.c.id)
        ).scalar_one()
        saga_id = start_saga(session, IntegrationOrderSaga, {"n": order_id})
        outbox.add(session, "orders.created", {"order_id": order_id})
        background_id = run_saga_background(
            background_tasks, IntegrationOrderSaga, {"n": -order_id}, session=session
        )
        if mode == "raise":
            raise RuntimeError("the sync endpoint failed")
        if mode == "deferred":
            session.execute(sa.insert(order_lines).values(order_id=999_999_999))
        return {"order_id": order_id, "saga_id": saga_id, "background_id": background_id}

    @app.post("/in-process")
    async def run_in_process(
        saga: Annotated[IntegrationOrderSaga, Depends(saga_factory(IntegrationOrderSaga))],
    ) -> dict[str, Any]:
        result = await saga.run({"n": 0})
        return {"saga_id": result.saga_id, "status": result.status.value}

    @app.get("/same-session")
    async def same_session(first: SagaSession, second: SagaSession) -> dict[str, bool]:
        return {"same": first is second}

    @app.get("/config")
    async def read_config(
        saga_config: Annotated[SagaConfig, Depends(get_config)],
    ) -> dict[str, Any]:
        return {"is_given_config": saga_config is config, "initialized": saga_config.initialized}

    return app
