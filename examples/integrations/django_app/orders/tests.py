"""The order service's own tests: ``python manage.py test orders``."""

import json

from django.db import connection
from django.test import Client, TransactionTestCase

from orders.models import Order
from orders.sagas import OrderSaga
from sagaz import SagaStatus
from sagaz.integrations.django import run_saga


def count(table: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT count(*) FROM {table}")
        return int(cursor.fetchone()[0])


class OrderServiceTests(TransactionTestCase):
    """Real commits (TransactionTestCase): what a worker would see."""

    def tearDown(self) -> None:
        with connection.cursor() as cursor:
            for table in ("sagaz_saga_steps", "sagaz_outbox", "sagaz_sagas"):
                cursor.execute(f"DELETE FROM {table}")

    def post(self, client: Client, **body: object) -> object:
        return client.post("/orders", json.dumps(body), content_type="application/json")

    def test_order_saga_and_event_commit_together(self) -> None:
        response = self.post(Client(), item="book", amount="12.50")
        assert response.status_code == 201
        assert Order.objects.count() == 1
        assert (count("sagaz_sagas"), count("sagaz_outbox")) == (1, 1)
        assert "X-Correlation-ID" in response

    def test_a_failing_view_leaves_nothing(self) -> None:
        client = Client(raise_request_exception=False)
        response = self.post(client, item="book", amount="1", fail_after_start=True)
        assert response.status_code == 500
        assert Order.objects.count() == 0
        assert (count("sagaz_sagas"), count("sagaz_outbox")) == (0, 0)

    def test_bad_input_is_a_400(self) -> None:
        assert self.post(Client(), item="book").status_code == 400

    def test_the_saga_ships_or_compensates(self) -> None:
        cheap = Order.objects.create(item="book", amount=10)
        dear = Order.objects.create(item="tv", amount=5000)
        shipped = run_saga(OrderSaga, {"order_id": cheap.pk, "amount": "10"})
        declined = run_saga(OrderSaga, {"order_id": dear.pk, "amount": "5000"})
        assert shipped.status == SagaStatus.COMPLETED
        assert declined.status == SagaStatus.COMPENSATED
        cheap.refresh_from_db()
        dear.refresh_from_db()
        assert (cheap.status, dear.status) == ("shipped", "cancelled")

    def test_health(self) -> None:
        response = Client().get("/sagaz/health")
        assert response.status_code == 200
        assert response.json()["database"] == "ok"
