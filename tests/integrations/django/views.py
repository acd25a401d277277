"""Test-only views: async views, a view without a transaction, run_saga from a view."""

from __future__ import annotations

from asgiref.sync import sync_to_async
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from orders.models import Order

from sagaz.integrations.django import atomic_outbox_add, atomic_saga_start, run_saga
from tests.integrations.django.django_sagas import NoteSaga, OrmSaga


def place(item: str) -> dict[str, object]:
    """The unit of work an async view hands to a thread: one transaction."""
    with transaction.atomic():
        order = Order.objects.create(item=item, amount=1)
        saga_id = atomic_saga_start(NoteSaga, {"n": order.pk})
        event_id = atomic_outbox_add("orders.created", {"id": order.pk})
    return {"order": order.pk, "saga_id": saga_id, "event_id": event_id}


@csrf_exempt
@transaction.non_atomic_requests  # ATOMIC_REQUESTS cannot wrap async views
async def async_order(request: HttpRequest) -> JsonResponse:
    return JsonResponse(await sync_to_async(place)("async"), status=201)


@csrf_exempt
@transaction.non_atomic_requests
async def async_direct(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"saga_id": atomic_saga_start(NoteSaga, {"n": 0})})


@csrf_exempt
@transaction.non_atomic_requests
def no_atomic(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"saga_id": atomic_saga_start(NoteSaga, {"n": 0})})


@transaction.non_atomic_requests
def run(request: HttpRequest) -> JsonResponse:
    order = Order.objects.create(item="run", amount=1)
    result = run_saga(OrmSaga, {"order_id": order.pk})
    return JsonResponse({"status": result.status.value, "order": order.pk})


def correlation(request: HttpRequest) -> JsonResponse:
    saga_id = atomic_saga_start(NoteSaga, {"n": 1})
    event_id = atomic_outbox_add("test.correlation", {"saga": saga_id})
    return JsonResponse(
        {"saga_id": saga_id, "event_id": event_id, "seen": request.correlation_id}  # type: ignore[attr-defined]
    )
