"""The FastAPI lifespan and the Flask extension refuse a database without sagaz's tables
at this sagaz's revision, saying to run `sagaz db upgrade`; at the head revision (or with
`create_all` tables, as the other integration tests build them) they start. (Django's
middleware: tests/integrations/django/test_django_schema_check.py.)"""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from sagaz import SagaConfig, SchemaNotReadyError
from sagaz.store import migrations
from tests.conftest import DatabaseUrls
from tests.integrations import flask_apps
from tests.integrations.fastapi_apps import build_app
from tests.integrations.integration_helpers import settled_pg_connections

pytestmark = pytest.mark.postgres

(HEAD,) = migrations.heads()


# -- FastAPI ----------------------------------------------------------------------------


@pytest.mark.parametrize("in_process", [False, True])
def test_fastapi_refuses_to_start_without_sagaz_tables(
    pg_empty: DatabaseUrls, admin: sa.Engine, in_process: bool
) -> None:
    config = SagaConfig(database_url=pg_empty.url, lease_seconds=1.5)
    app = build_app(config, run_worker=in_process, run_relay=in_process)
    threads = threading.active_count()
    with pytest.raises(SchemaNotReadyError) as raised, TestClient(app):
        pass
    message = str(raised.value)
    assert f"are not at revision {HEAD} (found: none; missing tables:" in message
    assert message.endswith("run `sagaz db upgrade`")
    # Whatever the lifespan had started is stopped again.
    assert not config.initialized
    assert settled_pg_connections(admin, str(pg_empty.application_name), 0) == 0
    assert threading.active_count() <= threads + 1  # TestClient's portal thread, at most


def test_fastapi_refuses_an_older_revision(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url, "0002_json_text")
    app = build_app(SagaConfig(database_url=pg_empty.url))
    with (
        pytest.raises(
            SchemaNotReadyError,
            match=f"at revision 0002_json_text, this sagaz expects {HEAD}: run `sagaz db upgrade`",
        ),
        TestClient(app),
    ):
        pass


def test_fastapi_starts_at_the_head_revision(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url)
    config = SagaConfig(database_url=pg_empty.url)
    with TestClient(build_app(config)) as client:
        assert client.get("/sagaz/health").status_code == 200


def test_fastapi_without_a_database_checks_nothing() -> None:
    with TestClient(build_app(SagaConfig())) as client:  # sagas in memory only
        assert client.get("/sagaz/health").status_code == 200


# -- Flask ------------------------------------------------------------------------------


def test_flask_refuses_requests_until_sagaz_tables_exist(pg_empty: DatabaseUrls) -> None:
    # init_app opens nothing (tests often create the tables after it): the check runs
    # before the first request, and again before each one until it passes.
    app, extension = flask_apps.build_app(pg_empty.url, create_tables=False)
    app.testing = True
    with flask_apps.running(app, extension):
        client = app.test_client()
        for _ in range(2):
            with pytest.raises(SchemaNotReadyError) as raised:
                client.get("/sagaz/health")
            assert "run `sagaz db upgrade`" in str(raised.value)
            assert "found: none; missing tables:" in str(raised.value)
        migrations.upgrade(pg_empty.url)
        assert client.get("/sagaz/health").status_code == 200


def test_flask_refuses_an_older_revision(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url, "0002_json_text")
    app, extension = flask_apps.build_app(pg_empty.url, create_tables=False)
    app.testing = True
    with (
        flask_apps.running(app, extension),
        pytest.raises(SchemaNotReadyError, match="at revision 0002_json_text"),
    ):
        app.test_client().get("/sagaz/health")


def test_flask_serves_at_the_head_revision(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url)
    app, extension = flask_apps.build_app(pg_empty.url, create_tables=False)
    with flask_apps.running(app, extension):
        assert app.test_client().get("/sagaz/health").status_code == 200
