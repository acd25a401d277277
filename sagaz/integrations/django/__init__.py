"""Django integration: sagas and outbox events written through Django's own connection.

    INSTALLED_APPS = [..., "sagaz.integrations.django"]      # `migrate` creates the tables
    MIDDLEWARE = [..., "sagaz.integrations.django.middleware.SagaContextMiddleware"]

    from django.db import transaction
    from sagaz.integrations.django import atomic_outbox_add, atomic_saga_start

    with transaction.atomic():
        order = Order.objects.create(total=42)
        saga_id = atomic_saga_start(OrderSaga, {"order_id": order.pk})
        atomic_outbox_add("orders.created", {"order_id": order.pk}, key=str(order.pk))
    # all three rows committed together, or none; `manage.py sagaz_worker` runs the saga

Django is imported only inside this package; without it, importing it raises
`sagaz.MissingExtraError` naming the `django` extra. See docs/django.md.
"""

from __future__ import annotations

from sagaz._util import requires_extra

with requires_extra("django", "django", "sagaz.integrations.django"):
    import django  # noqa: F401

from sagaz.integrations.django.runner import run_saga
from sagaz.integrations.django.steps import orm_step
from sagaz.integrations.django.storage import DjangoSagaStorage, NotInAtomicBlockError
from sagaz.integrations.django.transactions import atomic_outbox_add, atomic_saga_start

__all__ = [
    "DjangoSagaStorage",
    "NotInAtomicBlockError",
    "atomic_outbox_add",
    "atomic_saga_start",
    "orm_step",
    "run_saga",
]
