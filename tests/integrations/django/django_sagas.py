"""Sagas of the Django tests: ORM steps in threads, an async step that touches the ORM."""

from __future__ import annotations

from typing import Any

from orders.models import Order

from sagaz import Saga, action, compensate
from sagaz.integrations.django import orm_step

STEPS: list[str] = []


class NoteSaga(Saga):
    """One step; nothing to undo."""

    saga_name = "django-test-note"

    @action("note")
    async def note(self, ctx: dict[str, Any]) -> dict[str, Any]:
        STEPS.append(f"note:{ctx.get('n')}")
        return {"noted": True}


class OrmSaga(Saga):
    """A def step that reads and updates an Order through the ORM, in a thread."""

    saga_name = "django-test-orm"

    @action("touch")
    @orm_step
    def touch(self, ctx: dict[str, Any]) -> dict[str, Any]:
        order = Order.objects.get(pk=ctx["order_id"])
        Order.objects.filter(pk=order.pk).update(status="touched")
        return {"item": order.item}


class AsyncOrmSaga(Saga):
    """An async step that uses the ORM: Django refuses it on the event loop's thread."""

    saga_name = "django-test-async-orm"

    @action("first")
    def first(self, ctx: dict[str, Any]) -> None:
        STEPS.append("first")

    @compensate("first")
    def undo_first(self, ctx: dict[str, Any]) -> None:
        STEPS.append("undo first")

    @action("orm", depends_on=["first"])
    async def orm(self, ctx: dict[str, Any]) -> None:
        Order.objects.count()
