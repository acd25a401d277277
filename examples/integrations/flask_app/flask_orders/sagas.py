"""The order saga: reserve stock -> charge the card -> ship; each undone if a later step
fails.

The app imports this module, so ``flask --app flask_orders sagaz worker`` knows the saga
by name without ``--import``. The stock and payment services are simulated: an item
called "unobtainium" is never in stock, and cards are declined above 1,000.00.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession

from flask_orders.models import Order
from sagaz import Saga, action, compensate, outbox

log = logging.getLogger("flask_orders")


class OutOfStockError(Exception):
    pass


class CardDeclinedError(Exception):
    pass


class OrderSaga(Saga):
    saga_name = "flask-orders.order"

    @action("reserve")
    async def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["item"] == "unobtainium":
            raise OutOfStockError(f"no {ctx['item']} in stock")
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    async def release(self, ctx: dict[str, Any]) -> None:
        log.info("order %s: released reservation %s", ctx["order_id"], ctx["reservation"])

    @action("charge", depends_on=["reserve"], max_retries=2)
    async def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if ctx["total_cents"] > 100_000:
            raise CardDeclinedError(f"card declined for {ctx['total_cents'] / 100:.2f}")
        return {"payment": f"P-{ctx['order_id']}"}

    @compensate("charge")
    async def refund(self, ctx: dict[str, Any]) -> None:
        log.info("order %s: refunded payment %s", ctx["order_id"], ctx["payment"])

    @action("ship", depends_on=["charge"])
    async def ship(self, ctx: dict[str, Any], session: AsyncSession) -> dict[str, Any]:
        # A transactional step: the order update, the event and the step's completion
        # record commit together (or not at all) - in the worker, not in a request.
        order_id = ctx["order_id"]
        await session.execute(update(Order).where(Order.id == order_id).values(status="shipped"))
        outbox.add(session, "orders.shipped", {"order_id": order_id}, key=str(order_id))
        return {"tracking": f"T-{order_id}"}
