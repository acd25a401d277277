"""atomic_saga_start / atomic_outbox_add write through Django's own connection, inside
transaction.atomic(): they commit with the ORM's writes, vanish with an exception or a
rolled-back savepoint, refuse to run outside atomic(), and wake workers only after a
commit - on PostgreSQL (the test server) and SQLite."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from django.db import connections, transaction
from django.db.transaction import TransactionManagementError
from django.test import Client
from orders.models import Order
from orders.sagas import OrderSaga
from sqlalchemy.orm import Session

from sagaz import InvalidContextError, SagaContextManager, UnknownSagaError, outbox, start_saga
from sagaz.integrations.django import NotInAtomicBlockError, atomic_outbox_add, atomic_saga_start
from sagaz.integrations.django.conf import database_url
from sagaz.signals import outbox_signal, saga_signal
from sagaz.start import saga_id_for
from sagaz.store.engines import create_engine
from sagaz.store.statements import OUTBOX_CHANNEL, SAGA_CHANNEL
from tests.integrations.django.conftest import SCHEMA
from tests.integrations.django.helpers import committed
from tests.store.exact import same

BOTH = pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])


@pytest.fixture(params=["default", "sqlite"])
def alias(request: pytest.FixtureRequest) -> str:
    """The PostgreSQL alias, then the SQLite one."""
    return str(request.param)


def place(alias: str, item: str, *, key: str | None = None) -> tuple[str, str]:
    Order.objects.using(alias).create(item=item, amount=10)
    saga_id = atomic_saga_start(
        OrderSaga, {"order_id": 1, "amount": "10"}, using=alias, idempotency_key=key
    )
    event_id = atomic_outbox_add("orders.created", {"item": item}, key=item, using=alias)
    return saga_id, event_id


@BOTH
def test_order_saga_and_event_commit_together(alias: str) -> None:
    with SagaContextManager.scope("corr-1"), transaction.atomic(using=alias):
        saga_id, event_id = place(alias, "book")
        if alias == "default":  # (SQLite: another connection would wait for our lock)
            assert committed(alias) == {"orders": [], "sagas": [], "events": []}  # not yet
    seen = committed(alias)
    assert seen["orders"] == ["book"]
    (saga,) = seen["sagas"]
    assert (str(saga.id), saga.name, saga.status) == (saga_id, "django-order", "pending")
    assert saga.context == {"order_id": 1, "amount": "10"}
    assert saga.correlation_id == "corr-1"
    assert (saga.lease_token, saga.attempts, saga.lease_owner) == (0, 0, None)
    (event,) = seen["events"]
    assert (str(event.id), event.topic, event.key) == (event_id, "orders.created", "book")
    assert (event.payload, event.headers, event.status) == (
        {"item": "book"},
        {"correlation-id": "corr-1"},
        "pending",
    )


@BOTH
def test_a_none_payload_and_every_number_read_back_exactly(alias: str) -> None:
    numbers = [-0.0, 1.0, 1e16, 2**64, 10**599]
    with transaction.atomic(using=alias):
        Order.objects.using(alias).create(item="exact", amount=1)
        atomic_outbox_add("t.none", None, using=alias)
        atomic_outbox_add("t.numbers", numbers, using=alias)
        atomic_outbox_add("t.number", 1.0, using=alias)
    seen = committed(alias)
    assert seen["orders"] == ["exact"]
    assert same([event.payload for event in seen["events"]], [None, numbers, 1.0])


@BOTH
def test_rows_are_stored_exactly_as_the_sqlalchemy_path_stores_them(alias: str) -> None:
    """Same driver-level values (UUID text, JSON text, timestamp format) as start_saga and
    outbox.add write: the statements and SQLAlchemy's type processing are shared."""
    with transaction.atomic(using=alias):
        atomic_saga_start(OrderSaga, {"a": [1, "x"]}, using=alias, idempotency_key="django")
        atomic_outbox_add("t.x", {"a": 1}, key="k", headers={"h": "v"}, using=alias)
    engine = create_engine(database_url(alias), poolclass=sa.NullPool)
    try:
        with Session(engine) as session:
            start_saga(session, OrderSaga, {"a": [1, "x"]}, idempotency_key="sqlalchemy")
            outbox.add(session, "t.x", {"a": 1}, key="k", headers={"h": "v"})
            session.commit()
        with engine.connect() as connection:
            raw_sagas = connection.exec_driver_sql(
                "SELECT id, context, created_at, idempotency_key FROM sagaz_sagas"
                " ORDER BY idempotency_key"
            ).all()
            raw_events = connection.exec_driver_sql(
                "SELECT id, payload, headers, next_attempt_at FROM sagaz_outbox ORDER BY seq"
            ).all()
    finally:
        engine.dispose()

    def shape(row: sa.Row[Any]) -> list[object]:
        """Per raw value: its driver type and text length, and the value itself when
        it is the same for both rows (JSON documents)."""
        return [(type(value).__name__, len(str(value))) for value in row]

    django_saga, sqlalchemy_saga = raw_sagas
    assert shape(django_saga)[:3] == shape(sqlalchemy_saga)[:3]
    assert django_saga[1] == sqlalchemy_saga[1]  # the JSON, as stored
    django_event, sqlalchemy_event = raw_events
    assert shape(django_event) == shape(sqlalchemy_event)
    assert django_event[1:3] == sqlalchemy_event[1:3]


@BOTH
def test_an_exception_in_the_atomic_block_leaves_neither(alias: str) -> None:
    with pytest.raises(RuntimeError, match="after the saga"), transaction.atomic(using=alias):
        place(alias, "book")
        raise RuntimeError("failed after the saga")
    assert committed(alias) == {"orders": [], "sagas": [], "events": []}
    # and the connection is fine for the next unit of work
    with transaction.atomic(using=alias):
        place(alias, "next")
    assert committed(alias)["orders"] == ["next"]


@BOTH
def test_a_rolled_back_savepoint_removes_only_what_it_wrapped(alias: str) -> None:
    with transaction.atomic(using=alias):
        kept_saga, kept_event = place(alias, "kept")
        with pytest.raises(RuntimeError), transaction.atomic(using=alias):
            place(alias, "dropped")
            raise RuntimeError("inner block fails")
        after_saga, _ = place(alias, "after")
    seen = committed(alias)
    assert seen["orders"] == ["kept", "after"]
    assert {str(row.id) for row in seen["sagas"]} == {kept_saga, after_saga}
    assert [row.key for row in seen["events"]] == ["kept", "after"]
    assert str(seen["events"][0].id) == kept_event


@BOTH
def test_outside_atomic_it_raises_and_writes_nothing(alias: str) -> None:
    with pytest.raises(NotInAtomicBlockError, match=r"inside transaction\.atomic"):
        atomic_saga_start(OrderSaga, {"order_id": 1}, using=alias)
    with pytest.raises(TransactionManagementError):  # what Django code catches
        atomic_outbox_add("orders.created", {}, using=alias)
    assert committed(alias) == {"orders": [], "sagas": [], "events": []}


@BOTH
def test_an_atomic_block_on_another_database_does_not_count(alias: str) -> None:
    other = "sqlite" if alias == "default" else "default"
    with transaction.atomic(using=other), pytest.raises(NotInAtomicBlockError):
        atomic_saga_start(OrderSaga, {"order_id": 1}, using=alias)


@BOTH
def test_bad_input_is_refused_before_anything_is_written(alias: str) -> None:
    with transaction.atomic(using=alias):
        with pytest.raises(InvalidContextError, match=r"context\['when'\]"):
            atomic_saga_start(OrderSaga, {"when": object()}, using=alias)
        with pytest.raises(UnknownSagaError):
            atomic_saga_start("no-such-saga", {}, using=alias)
        with pytest.raises(InvalidContextError, match="topic"):
            atomic_outbox_add("bad topic!", {}, using=alias)
        with pytest.raises(InvalidContextError, match="header"):
            atomic_outbox_add("t", {}, headers={"x": "a\r\nb"}, using=alias)
        Order.objects.using(alias).create(item="still fine", amount=1)
    assert committed(alias) == {"orders": ["still fine"], "sagas": [], "events": []}


@BOTH
def test_idempotency_keys_match_start_saga(alias: str) -> None:
    with transaction.atomic(using=alias):
        first = atomic_saga_start(OrderSaga, {"try": 1}, using=alias, idempotency_key="o-1")
        again = atomic_saga_start(OrderSaga, {"try": 2}, using=alias, idempotency_key="o-1")
    assert first == again == saga_id_for("django-order", "o-1")
    (saga,) = committed(alias)["sagas"]
    assert saga.context == {"try": 1}  # the first one wins
    # The SQLAlchemy path derives the same id and finds the saga already there.
    engine = create_engine(database_url(alias), poolclass=sa.NullPool)
    try:
        with Session(engine) as session:
            assert start_saga(session, OrderSaga, {"try": 3}, idempotency_key="o-1") == first
            session.commit()
    finally:
        engine.dispose()
    assert len(committed(alias)["sagas"]) == 1


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@BOTH
def test_local_workers_are_woken_after_commit_only(
    alias: str, loop: asyncio.AbstractEventLoop
) -> None:
    async def subscribe() -> tuple[object, object]:
        return saga_signal.subscribe(), outbox_signal.subscribe()

    sagas_woken, events_woken = loop.run_until_complete(subscribe())
    try:
        with transaction.atomic(using=alias):
            place(alias, "book")
            assert not loop.run_until_complete(sagas_woken.wait(0.05))  # type: ignore[attr-defined]
        assert loop.run_until_complete(sagas_woken.wait(2))  # type: ignore[attr-defined]
        assert loop.run_until_complete(events_woken.wait(2))  # type: ignore[attr-defined]

        with pytest.raises(RuntimeError), transaction.atomic(using=alias):
            place(alias, "rolled back")
            raise RuntimeError
        with (
            transaction.atomic(using=alias),
            pytest.raises(RuntimeError),
            transaction.atomic(using=alias),
        ):
            place(alias, "savepoint")
            raise RuntimeError
        assert not loop.run_until_complete(sagas_woken.wait(0.2))  # type: ignore[attr-defined]
        assert not loop.run_until_complete(events_woken.wait(0.01))  # type: ignore[attr-defined]
    finally:
        sagas_woken.close()  # type: ignore[attr-defined]
        events_woken.close()  # type: ignore[attr-defined]


def ours(listener: psycopg.Connection[Any], seconds: float) -> set[str]:
    """Channels notified for this session's schema within `seconds` (tests running
    elsewhere on the same server notify for their own schemas)."""
    return {n.channel for n in listener.notifies(timeout=seconds) if n.payload == SCHEMA}


@pytest.mark.django_db(transaction=True)
def test_postgresql_notifies_other_processes_on_commit_only() -> None:
    settings = connections["default"].settings_dict
    listener = psycopg.connect(
        host=settings["HOST"] or None,
        port=settings["PORT"] or None,
        user=settings["USER"] or None,
        password=settings["PASSWORD"] or None,
        dbname=settings["NAME"],
        autocommit=True,
    )
    try:
        listener.execute(f"LISTEN {SAGA_CHANNEL}")
        listener.execute(f"LISTEN {OUTBOX_CHANNEL}")
        with pytest.raises(RuntimeError), transaction.atomic():
            place("default", "rolled back")
            raise RuntimeError
        assert ours(listener, 0.3) == set()
        with transaction.atomic():
            place("default", "book")
        assert ours(listener, 1.0) == {SAGA_CHANNEL, OUTBOX_CHANNEL}
    finally:
        listener.close()


@pytest.mark.django_db(transaction=True)
def test_the_example_view_commits_everything_with_atomic_requests() -> None:
    client = Client()
    response = client.post(
        "/orders", {"item": "lamp", "amount": "12.50"}, content_type="application/json"
    )
    assert response.status_code == 201
    order = Order.objects.get()
    seen = committed()
    assert seen["orders"] == ["lamp"]
    (saga,) = seen["sagas"]
    assert str(saga.id) == order.saga_id == saga_id_for("django-order", f"order-{order.pk}")
    (event,) = seen["events"]
    assert (event.topic, str(event.saga_id)) == ("orders.created", order.saga_id)


@pytest.mark.django_db(transaction=True)
def test_the_example_view_that_raises_leaves_nothing() -> None:
    client = Client(raise_request_exception=False)
    response = client.post(
        "/orders",
        {"item": "lamp", "amount": "1", "fail_after_start": True},
        content_type="application/json",
    )
    assert response.status_code == 500
    assert committed() == {"orders": [], "sagas": [], "events": []}


@pytest.mark.django_db(transaction=True)
def test_a_view_without_a_transaction_is_refused() -> None:
    response = Client(raise_request_exception=False).post("/test/no-atomic")
    assert response.status_code == 500
    with pytest.raises(NotInAtomicBlockError):
        Client().post("/test/no-atomic")
    assert committed()["sagas"] == []
