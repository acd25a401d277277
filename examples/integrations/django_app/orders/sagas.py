"""The order saga: reserve stock, charge the card, ship - undone in reverse on failure.

Imported at startup by sagaz's app (each app's ``sagas`` module), in the web process and
in ``manage.py sagaz_worker``. The steps use the Django ORM, so they are plain ``def``
functions (sagaz runs them in worker threads, where the ORM may run) marked `orm_step`
(their thread's connection is closed after each step, as after a request).
"""

import logging
from decimal import Decimal
from typing import Any

from orders.models import Order
from sagaz import Saga, action, compensate
from sagaz.integrations.django import orm_step

log = logging.getLogger("orders")

#: Charges above this amount are declined (to show compensation).
CARD_LIMIT = Decimal("1000")


class PaymentDeclined(Exception):
    pass


def _set_status(order_id: int, status: str) -> None:
    Order.objects.filter(pk=order_id).update(status=status)


class OrderSaga(Saga):
    saga_name = "django-order"

    @action("reserve")
    @orm_step
    def reserve(self, ctx: dict[str, Any]) -> dict[str, Any]:
        _set_status(ctx["order_id"], "reserved")
        return {"reservation": f"R-{ctx['order_id']}"}

    @compensate("reserve")
    @orm_step
    def release(self, ctx: dict[str, Any]) -> None:
        log.info("order %s: released reservation %s", ctx["order_id"], ctx.get("reservation"))
        _set_status(ctx["order_id"], "cancelled")

    @action("charge", depends_on=["reserve"])
    @orm_step
    def charge(self, ctx: dict[str, Any]) -> dict[str, Any]:
        if Decimal(ctx["amount"]) > CARD_LIMIT:
            raise PaymentDeclined(f"card declined for {ctx['amount']}")
        _set_status(ctx["order_id"], "charged")
        return {"charge": f"C-{ctx['order_id']}"}

    @compensate("charge")
    @orm_step
    def refund(self, ctx: dict[str, Any]) -> None:
        log.info("order %s: refunded %s", ctx["order_id"], ctx.get("charge"))

    @action("ship", depends_on=["charge"])
    @orm_step
    def ship(self, ctx: dict[str, Any]) -> dict[str, Any]:
        _set_status(ctx["order_id"], "shipped")
        return {"tracking": f"T-{ctx['order_id']}"}
