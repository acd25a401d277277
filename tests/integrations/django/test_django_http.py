"""The correlation middleware (sync and async), the health view, async views, and
run_saga from views under threads and from a thread whose event loop is running."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.test import AsyncClient, Client, override_settings
from orders.models import Order

from sagaz import SagaStatus
from sagaz.integrations.django import NotInAtomicBlockError, run_saga
from tests.integrations.django.django_sagas import AsyncOrmSaga, OrmSaga
from tests.integrations.django.helpers import committed

HOSTILE = ["a" * 129, "bad id", "x\u00e9", "", "<script>"]


@pytest.mark.django_db(transaction=True)
def test_correlation_id_flows_from_header_to_saga_event_and_response() -> None:
    response = Client().get("/test/correlation", headers={"X-Correlation-ID": "req-42.a:b"})
    assert response["X-Correlation-ID"] == "req-42.a:b"
    assert response.json()["seen"] == "req-42.a:b"
    seen = committed()
    assert [row.correlation_id for row in seen["sagas"]] == ["req-42.a:b"]
    assert [row.headers["correlation-id"] for row in seen["events"]] == ["req-42.a:b"]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_correlation_ids_are_replaced_never_reflected(value: str) -> None:
    response = Client().get("/test/correlation", headers={"X-Correlation-ID": value})
    echoed = response["X-Correlation-ID"]
    assert echoed != value
    assert len(echoed) == 32
    assert response.json()["seen"] == echoed
    assert committed()["sagas"][0].correlation_id == echoed


@pytest.mark.django_db(transaction=True)
def test_a_fresh_id_without_header_and_a_configurable_header() -> None:
    first = Client().get("/test/correlation")["X-Correlation-ID"]
    second = Client().get("/test/correlation")["X-Correlation-ID"]
    assert first != second
    with override_settings(SAGAZ={"CORRELATION_HEADER": "X-Request-ID"}):
        from django.test.client import ClientHandler

        handler_client = Client()
        handler_client.handler = ClientHandler()  # a fresh middleware chain
        response = handler_client.get("/test/correlation", headers={"X-Request-ID": "abc"})
    assert response["X-Request-ID"] == "abc"


@pytest.mark.django_db(transaction=True)
async def test_async_views_work_through_sync_to_async_and_the_async_middleware() -> None:
    client = AsyncClient()
    response = await client.post("/test/async-order", headers={"X-Correlation-ID": "async-1"})
    assert response.status_code == 201
    assert response["X-Correlation-ID"] == "async-1"
    seen = await asyncio.to_thread(committed)
    assert seen["orders"] == ["async"]
    assert [row.correlation_id for row in seen["sagas"]] == ["async-1"]
    assert [row.headers["correlation-id"] for row in seen["events"]] == ["async-1"]
    # Called on the event loop itself, outside any atomic block: refused.
    with pytest.raises(NotInAtomicBlockError):
        await client.post("/test/async-direct")


@pytest.mark.django_db(transaction=True)
def test_health_reports_the_outbox() -> None:
    response = Client().get("/sagaz/health")
    assert response.status_code == 200
    body = response.json()
    assert (body["status"], body["database"], body["problems"]) == ("ok", "ok", [])
    assert body["outbox"] == {"pending": 0, "dead": 0, "oldest_pending_age_seconds": None}
    assert Client().post("/sagaz/health").status_code == 405


def test_health_is_503_when_the_database_is_unreachable() -> None:
    with override_settings(SAGAZ={"DATABASE": "unreachable"}):
        response = Client().get("/sagaz/health")
    assert response.status_code == 503
    body = response.json()
    assert (body["status"], body["database"]) == ("failing", "unavailable")
    assert body["problems"] == ["the database does not answer"]


@pytest.mark.django_db(transaction=True)
def test_run_saga_from_threaded_views_with_orm_steps() -> None:
    def request(_: int) -> tuple[int, str, int]:
        try:
            response = Client().get("/test/run")
            return response.status_code, response.json()["status"], response.json()["order"]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(request, range(24)))
    assert {(code, status) for code, status, _ in results} == {(200, "completed")}
    orders = {order for _, _, order in results}
    assert (
        set(Order.objects.filter(pk__in=orders, status="touched").values_list("pk", flat=True))
        == orders
    )


@pytest.mark.django_db(transaction=True)
def test_run_saga_from_a_thread_whose_event_loop_is_running() -> None:
    order = Order.objects.create(item="loop", amount=1)
    outcome: dict[str, object] = {}

    async def view_like() -> None:
        outcome["result"] = run_saga(OrmSaga, {"order_id": order.pk})  # blocks this loop

    def thread() -> None:
        try:
            asyncio.run(view_like())
        finally:
            connections.close_all()

    worker = threading.Thread(target=thread)
    worker.start()
    worker.join(30)
    result = outcome["result"]
    assert result.status is SagaStatus.COMPLETED  # type: ignore[attr-defined]
    assert result.context["item"] == "loop"  # type: ignore[attr-defined]


@pytest.mark.django_db(transaction=True)
def test_an_async_step_using_the_orm_is_refused_and_compensated(step_log: list[str]) -> None:
    result = run_saga(AsyncOrmSaga, {})
    assert result.status is SagaStatus.COMPENSATED
    assert "SynchronousOnlyOperation" in str(result.error)
    assert step_log == ["first", "undo first"]


def test_run_saga_loop_stops_on_close_and_restarts_on_next_use() -> None:
    from sagaz.integrations.django import runner
    from tests.integrations.django.django_sagas import NoteSaga

    def loops() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name == "sagaz-django"]

    assert run_saga(NoteSaga, {"n": 1}).status is SagaStatus.COMPLETED
    assert loops() == ["sagaz-django"]
    runner.close()
    assert loops() == []
    assert run_saga(NoteSaga, {"n": 2}).status is SagaStatus.COMPLETED


def test_run_saga_takes_a_saga_instance_with_its_own_config_and_refuses_anything_else() -> None:
    from sagaz.integrations.django import runner
    from tests.integrations.django.django_sagas import NoteSaga

    result = run_saga(NoteSaga(), {"n": 3}, saga_id="django-run-saga-instance")
    assert result.status is SagaStatus.COMPLETED
    assert result.saga_id == "django-run-saga-instance"
    assert runner.portal() is runner.portal()  # one portal for every call
    for wrong in (object(), "django-test-note", NoteSaga.run):
        with pytest.raises(TypeError, match="run_saga needs a Saga class or instance"):
            run_saga(wrong, {})  # type: ignore[arg-type]


def test_health_urls_take_path_and_name_as_in_every_adapter() -> None:
    from django.urls import URLResolver
    from django.urls.resolvers import RegexPattern

    from sagaz.integrations.django.views import health, health_urls

    resolver = URLResolver(RegexPattern(r"^/"), health_urls(path="ops/health", name="ops_health"))
    match = resolver.resolve("/ops/health")
    assert (match.func, match.url_name) == (health, "ops_health")
    assert resolver.reverse("ops_health") == "ops/health"
