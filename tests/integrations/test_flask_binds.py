"""Several binds: sagaz's rows go to the bind of the application rows they accompany, in
the same transaction; a unit of work that would split them across binds is refused
with an error naming both. Two PostgreSQL schemas stand for two databases (each engine
holds its own connection, so each is its own transaction).

Also the hook underneath, `session.info["sagaz.bind_arguments"]`, on a plain Session.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from sagaz import outbox, start_saga
from sagaz.integrations.flask import CrossBindError, SagazExtension
from sagaz.store.schema import metadata, sagas
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.unit_of_work import BIND_ARGUMENTS_KEY
from tests.conftest import DatabaseUrls, postgres_urls
from tests.integrations.flask_apps import Invoice, Order, build_app, counts, db, running
from tests.integrations.integration_helpers import IntegrationOrderSaga

pytestmark = pytest.mark.postgres


@pytest.fixture
def billing(postgres_server_url: str) -> Iterator[DatabaseUrls]:
    """A second schema with sagaz's tables and the application's invoices."""
    schema = f"b_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(make_url(postgres_server_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    urls = postgres_urls(postgres_server_url, schema)
    engine = urls.sync_engine()
    with engine.begin() as connection:
        metadata.create_all(connection)
        Invoice.__table__.create(connection)
    engine.dispose()
    try:
        yield urls
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def default_engine(pg: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = pg.sync_engine()
    yield engine
    engine.dispose()


@pytest.fixture
def billing_engine(billing: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = billing.sync_engine()
    yield engine
    engine.dispose()


def sagaz_rows(engine: sa.Engine) -> tuple[int, int]:
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) or 0,
        )


def invoices(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.select(sa.func.count()).select_from(Invoice.__table__)) or 0


def app_with_binds(pg: DatabaseUrls, billing: DatabaseUrls, **options: object) -> Flask:
    app, _extension = build_app(pg.url, binds={"billing": billing.url}, **options)
    return app


# -- Flask-SQLAlchemy binds -------------------------------------------------------------


def test_sagaz_rows_follow_the_application_rows_to_the_sagaz_bind(
    pg: DatabaseUrls, billing: DatabaseUrls, default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url}, bind_key="billing")
    with running(app, extension):
        assert extension.config(app).database_url == billing.url  # the worker reads there
        response = app.test_client().post("/invoices")
        assert response.status_code == 201, response.text
    assert invoices(billing_engine) == 1
    assert sagaz_rows(billing_engine) == (1, 1)
    assert sagaz_rows(default_engine) == (0, 0)


def test_splitting_a_unit_of_work_across_binds_is_refused_naming_both(
    pg: DatabaseUrls, billing: DatabaseUrls, default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url})  # sagaz: default bind
    with running(app, extension), app.app_context():
        db.session.add(Invoice(amount=5))
        db.session.flush()
        extension.start_saga(IntegrationOrderSaga, {"n": 1})
        outbox.add(db.session, "invoices.created", {})
        with pytest.raises(CrossBindError) as refused:
            db.session.commit()
        message = str(refused.value)
        assert "None (the default bind)" in message
        assert "'billing'" in message
        db.session.rollback()
    assert invoices(billing_engine) == 0
    assert sagaz_rows(billing_engine) == (0, 0)
    assert sagaz_rows(default_engine) == (0, 0)


def test_a_refusing_view_is_an_error_response_that_leaves_nothing(
    pg: DatabaseUrls, billing: DatabaseUrls, default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url}, bind_key="billing")
    with running(app, extension):
        # an Order (default bind) and an Invoice (billing) in one unit of work with a saga
        response = app.test_client().post("/invoices", query_string={"order": "1"})
    assert response.status_code == 500
    assert invoices(billing_engine) == 0
    assert sagaz_rows(billing_engine) == (0, 0)
    assert counts(default_engine) == (0, 0, 0)


@pytest.mark.parametrize("statement", ["orm", "core"])
def test_bulk_statements_on_another_bind_are_seen_too(
    pg: DatabaseUrls, billing: DatabaseUrls, billing_engine: sa.Engine, statement: str
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url})
    with running(app, extension), app.app_context():
        target = Invoice if statement == "orm" else Invoice.__table__
        db.session.execute(sa.insert(target).values(amount=3))
        outbox.add(db.session, "invoices.created", {})
        with pytest.raises(CrossBindError, match="'billing'"):
            db.session.commit()
        db.session.rollback()
    assert invoices(billing_engine) == 0


def test_reads_on_another_bind_do_not_count(
    pg: DatabaseUrls, billing: DatabaseUrls, default_engine: sa.Engine
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url})
    with running(app, extension), app.app_context():
        assert db.session.scalars(sa.select(Invoice)).all() == []  # opens a billing connection
        db.session.add(Order(item="read-then-write"))
        db.session.flush()
        extension.start_saga(IntegrationOrderSaga, {"n": 1})
        db.session.commit()
    assert counts(default_engine) == (1, 1, 0)


def test_a_unit_of_work_with_only_sagaz_rows_goes_to_the_sagaz_bind(
    pg: DatabaseUrls, billing: DatabaseUrls, default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    app, extension = build_app(pg.url, binds={"billing": billing.url}, bind_key="billing")
    with running(app, extension), app.app_context():
        outbox.add(db.session, "alone", {})
        db.session.commit()
    assert sagaz_rows(billing_engine) == (0, 1)
    assert sagaz_rows(default_engine) == (0, 0)


def test_an_unknown_bind_key_is_a_configuration_error(pg: DatabaseUrls) -> None:
    from sagaz import ConfigurationError

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = pg.url
    db.init_app(app)
    with pytest.raises(ConfigurationError, match="SAGAZ_BIND_KEY 'nope' is not a bind"):
        SagazExtension(app, db, bind_key="nope")


# -- the hook in sagaz.store.unit_of_work, on a plain Session -----------------------------


def test_without_the_hook_rows_go_to_the_sessions_default_bind(
    default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    with Session(default_engine, binds={Invoice.__table__: billing_engine}) as session:
        start_saga(session, IntegrationOrderSaga, {"n": 1})
        session.commit()
    assert sagaz_rows(default_engine) == (1, 0)
    assert sagaz_rows(billing_engine) == (0, 0)


def test_bind_arguments_in_session_info_choose_the_connection(
    default_engine: sa.Engine, billing_engine: sa.Engine
) -> None:
    with Session(
        default_engine,
        binds={Invoice.__table__: billing_engine},
        info={BIND_ARGUMENTS_KEY: {"clause": Invoice.__table__}},
    ) as session:
        session.execute(sa.insert(Invoice.__table__).values(amount=1))
        outbox.add(session, "invoices.created", {})
        session.rollback()  # both go: the event was on the invoice's transaction
        session.execute(sa.insert(Invoice.__table__).values(amount=2))
        outbox.add(session, "invoices.created", {})
        session.commit()
    assert invoices(billing_engine) == 1
    assert sagaz_rows(billing_engine) == (0, 1)
    assert sagaz_rows(default_engine) == (0, 0)


def test_a_callable_hook_may_refuse_and_the_rows_stay_queued(default_engine: sa.Engine) -> None:
    refuse = [True]

    def choose(session: Session) -> dict[str, object]:
        if refuse[0]:
            raise CrossBindError("not now")
        return {"bind": default_engine}

    with Session(default_engine, info={BIND_ARGUMENTS_KEY: choose}) as session:
        outbox.add(session, "retried", {})
        with pytest.raises(CrossBindError):
            session.commit()
        refuse[0] = False
        session.commit()  # the refused rows were not dropped on the floor
    assert sagaz_rows(default_engine) == (0, 1)


def test_cross_bind_error_is_a_sagaz_error_also_importable_from_the_adapter() -> None:
    from sagaz import errors
    from sagaz.integrations import flask as flask_integration

    assert flask_integration.CrossBindError is errors.CrossBindError
    assert "CrossBindError" in flask_integration.__all__
    assert issubclass(CrossBindError, errors.SagazError)
    assert issubclass(CrossBindError, RuntimeError)
