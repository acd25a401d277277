"""POST /orders places an order; GET /orders/<id> shows how far its saga got.

ATOMIC_REQUESTS is on (settings.py), so each view runs in one transaction: the order
row, its saga and its outbox event commit together when the view returns, and none of
them exists if it raises.
"""

import json
from decimal import Decimal, InvalidOperation

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST

from orders.models import Order
from orders.sagas import OrderSaga
from sagaz.integrations.django import atomic_outbox_add, atomic_saga_start


def _bad_request(message: str) -> JsonResponse:
    return JsonResponse({"error": message}, status=400)


@csrf_exempt
@require_POST
def create_order(request: HttpRequest) -> JsonResponse:
    try:
        body = json.loads(request.body or b"{}")
        item = str(body["item"])[:100]
        quantity = int(body.get("quantity", 1))
        amount = Decimal(str(body["amount"]))
    except (ValueError, KeyError, TypeError, InvalidOperation):
        return _bad_request('send JSON like {"item": "book", "quantity": 1, "amount": "12.50"}')
    if quantity < 1 or amount <= 0:
        return _bad_request("quantity and amount must be positive")

    order = Order.objects.create(item=item, quantity=quantity, amount=amount)
    order.saga_id = atomic_saga_start(
        OrderSaga,
        {"order_id": order.pk, "amount": str(amount)},
        idempotency_key=f"order-{order.pk}",
    )
    order.save(update_fields=["saga_id"])
    atomic_outbox_add("orders.created", order.as_dict(), key=str(order.pk), saga_id=order.saga_id)
    if body.get("fail_after_start"):  # to see the rollback: nothing of it is saved
        raise RuntimeError("the view failed after starting its saga")
    return JsonResponse(order.as_dict(), status=201)


@require_GET
def order_detail(request: HttpRequest, order_id: int) -> JsonResponse:
    return JsonResponse(get_object_or_404(Order, pk=order_id).as_dict())
