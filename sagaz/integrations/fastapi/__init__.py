"""FastAPI integration: lifespan, session dependency, saga injection, durable background
runs, correlation-id middleware and a health router.

    from fastapi import Depends, FastAPI
    from sqlalchemy.ext.asyncio import AsyncSession
    from sagaz import outbox, start_saga
    from sagaz.integrations.fastapi import (
        SagaContextMiddleware, create_lifespan, get_saga_session, health_router,
    )

    app = FastAPI(lifespan=create_lifespan())          # SAGAZ_* environment variables
    app.add_middleware(SagaContextMiddleware)
    app.include_router(health_router)

    @app.post("/orders", status_code=201)
    async def create_order(session: AsyncSession = Depends(get_saga_session)):
        order = Order(total=42); session.add(order); await session.flush()
        saga_id = start_saga(session, OrderSaga, {"order_id": order.id})
        outbox.add(session, "orders.created", {"order_id": order.id})
        return {"saga_id": saga_id}   # committed - all three rows - before this is sent

FastAPI is imported only inside this package, a module per concern: `lifespan`,
`dependencies`, `background`, `health`; the middleware is `sagaz.integrations.asgi`'s,
which needs no FastAPI. See docs/fastapi.md.
"""

from __future__ import annotations

from sagaz._util import requires_extra

with requires_extra("fastapi", "fastapi", "sagaz.integrations.fastapi"):
    import fastapi

MIN_FASTAPI_VERSION = (0, 121)
"""`Depends(..., scope="function")` - cleanup before the response is sent - came in 0.121."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts: list[int] = []
    for part in version.split(".")[:2]:
        digits = "".join(c for c in part if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


if _version_tuple(fastapi.__version__) < MIN_FASTAPI_VERSION:
    raise ImportError(
        f"sagaz.integrations.fastapi needs fastapi>=0.121 (Depends(scope='function') commits "
        f"before the response is sent), found {fastapi.__version__}; "
        "install it with: pip install 'sagaz[fastapi]'"
    )

from sagaz.integrations.asgi import SagaContextMiddleware  # noqa: E402
from sagaz.integrations.fastapi.background import run_saga_background  # noqa: E402
from sagaz.integrations.fastapi.dependencies import (  # noqa: E402
    SagaFactory,
    get_config,
    get_saga_session,
    get_sync_saga_session,
    saga_factory,
)
from sagaz.integrations.fastapi.health import create_health_router, health_router  # noqa: E402
from sagaz.integrations.fastapi.lifespan import create_lifespan  # noqa: E402

__all__ = [
    "SagaContextMiddleware",
    "SagaFactory",
    "create_health_router",
    "create_lifespan",
    "get_config",
    "get_saga_session",
    "get_sync_saga_session",
    "health_router",
    "run_saga_background",
    "saga_factory",
]
