"""Flask-SQLAlchemy's db.session carries the saga and the outbox event, on real
PostgreSQL through Flask's test client: the application's row, the saga and the event
commit together on db.session.commit(), and none of them exists after
db.session.rollback(), an exception in the view, an abort, a view that never commits, or
a commit that fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from sagaz import ConfigurationError, outbox
from sagaz.integrations.flask import SagazExtension
from sagaz.store.schema import sagas
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import Order, build_app, counts, db, running
from tests.integrations.integration_helpers import IntegrationOrderSaga, outbox_rows, saga_row

pytestmark = pytest.mark.postgres


@pytest.fixture
def app(app_db: DatabaseUrls) -> Iterator[Flask]:
    flask_app, extension = build_app(app_db.url)
    with running(flask_app, extension):
        yield flask_app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def test_order_saga_and_event_commit_together(client: FlaskClient, sync_db: sa.Engine) -> None:
    response = client.post("/orders", query_string={"item": "lamp"})
    assert response.status_code == 201, response.text
    body = response.get_json()
    assert counts(sync_db) == (1, 1, 1)
    saga = saga_row(sync_db, body["saga_id"])
    assert saga is not None
    assert saga.name == "integration-order"
    assert saga.status == "pending"  # recorded for a worker
    assert saga.context == {"n": body["order_id"]}
    [event] = outbox_rows(sync_db)
    assert str(event.id) == body["event_id"]
    assert event.payload == {"order_id": body["order_id"]}
    with sync_db.connect() as connection:
        assert connection.scalar(sa.select(Order.__table__.c.item)) == "lamp"


@pytest.mark.parametrize(
    ("mode", "status"),
    [("raise", 500), ("abort", 409), ("rollback", 200), ("nocommit", 201), ("deferred", 500)],
)
def test_nothing_exists_unless_the_view_commits(
    client: FlaskClient, sync_db: sa.Engine, mode: str, status: int
) -> None:
    response = client.post("/orders", query_string={"mode": mode})
    assert response.status_code == status
    assert counts(sync_db) == (0, 0, 0)
    # The session is clean for the next request, which commits only its own rows.
    assert client.post("/orders").status_code == 201
    assert counts(sync_db) == (1, 1, 1)


def test_a_failed_request_leaves_nothing_even_when_the_app_context_outlives_it(
    app: Flask, sync_db: sa.Engine
) -> None:
    """With an app context pushed around the requests (as tests often do), Flask-SQLAlchemy
    does not remove db.session after each request: the extension rolls back what a
    request that raised left in it, so the next request's commit cannot carry it."""
    client = app.test_client()
    with app.app_context():
        assert client.post("/orders", query_string={"mode": "raise"}).status_code == 500
        assert client.post("/orders").status_code == 201
    assert counts(sync_db) == (1, 1, 1)


def test_rolling_back_a_savepoint_drops_only_what_it_held(app: Flask, sync_db: sa.Engine) -> None:
    with app.app_context():
        session = db.session()
        session.add(Order(item="kept"))
        with session.begin_nested() as savepoint:
            session.add(Order(item="dropped"))
            session.flush()
            outbox.add(session, "orders.dropped", {})
            savepoint.rollback()
        outbox.add(session, "orders.kept", {})
        db.session.commit()
    assert counts(sync_db) == (1, 0, 1)
    assert [row.topic for row in outbox_rows(sync_db)] == ["orders.kept"]


def test_an_idempotency_key_makes_repeats_return_the_same_saga(
    client: FlaskClient, sync_db: sa.Engine
) -> None:
    first = client.post("/orders", query_string={"key": "order-1"}).get_json()
    second = client.post("/orders", query_string={"key": "order-1"}).get_json()
    assert first["saga_id"] == second["saga_id"]
    with sync_db.connect() as connection:
        assert connection.scalar(sa.select(sa.func.count()).select_from(sagas)) == 1


def test_start_saga_needs_the_db(app_db: DatabaseUrls) -> None:
    app = Flask(__name__)
    extension = SagazExtension(app, database_url=app_db.url)
    with app.test_request_context(), pytest.raises(ConfigurationError, match="Flask-SQLAlchemy"):
        extension.start_saga(IntegrationOrderSaga, {})
