"""1,000 requests through the example's POST /orders, from 8 threads at once, open no
database connection of sagaz's own and leave none behind (pg_stat_activity, counting
only the connections with this session's application_name)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import sqlalchemy as sa
from django.db import connections
from django.db.backends.signals import connection_created
from django.test import Client

from tests.integrations.django.conftest import APPLICATION_NAME
from tests.integrations.django.helpers import committed

REQUESTS = 1000
THREADS = 8


def open_connections(admin: sa.Engine) -> int:
    with admin.connect() as connection:
        return int(
            connection.scalar(
                sa.text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"),
                {"name": APPLICATION_NAME},
            )
            or 0
        )


@pytest.mark.django_db(transaction=True)
def test_a_thousand_threaded_requests_leave_no_extra_connections(admin_engine: sa.Engine) -> None:
    connections.close_all()
    baseline = open_connections(admin_engine)
    created: list[str] = []
    count_lock = threading.Lock()

    def on_created(sender: Any, connection: Any, **kwargs: Any) -> None:
        with count_lock:
            created.append(connection.alias)

    peak = baseline
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, open_connections(admin_engine))
            stop.wait(0.02)

    local = threading.local()

    def post(number: int) -> int:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = Client()
        response = client.post(
            "/orders", {"item": f"item-{number}", "amount": "5"}, content_type="application/json"
        )
        return response.status_code

    def close_thread_connections(_: int) -> None:
        connections.close_all()  # what a WSGI server's request_finished does

    connection_created.connect(on_created)
    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(THREADS) as pool:
            statuses = list(pool.map(post, range(REQUESTS)))
            # one close per worker thread (the barrier keeps each on its own thread)
            barrier = threading.Barrier(THREADS)
            list(pool.map(lambda n: (barrier.wait(), close_thread_connections(n)), range(THREADS)))
    finally:
        stop.set()
        watcher.join()
        connection_created.disconnect(on_created)

    assert statuses == [201] * REQUESTS
    # one Django connection per server thread, reused by its requests; nothing else
    assert created == ["default"] * THREADS
    assert peak <= baseline + THREADS
    # (a closed connection's backend leaves pg_stat_activity a moment later)
    deadline = time.monotonic() + 5
    while open_connections(admin_engine) != baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_connections(admin_engine) == baseline
    seen = committed()
    assert len(seen["orders"]) == len(seen["sagas"]) == len(seen["events"]) == REQUESTS
