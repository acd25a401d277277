"""The optional health blueprint: GET /sagaz/health reports whether the app's sagaz
database answers and its outbox counts; 503 when it does not."""

from __future__ import annotations

import pytest
from flask import Flask

from sagaz.integrations.flask import SagazExtension, create_health_blueprint
from tests.conftest import DatabaseUrls
from tests.integrations.flask_apps import build_app, running


@pytest.mark.postgres
def test_health_reports_the_outbox_counts(app_db: DatabaseUrls) -> None:
    app, extension = build_app(app_db.url)
    with running(app, extension):
        client = app.test_client()
        assert client.post("/orders").status_code == 201
        response = client.get("/sagaz/health")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["database"] == "ok"
    assert body["outbox"]["pending"] == 1
    assert body["outbox"]["dead"] == 0


def test_an_unreachable_database_is_a_503_naming_only_the_error_type() -> None:
    app = Flask(__name__)
    app.config["SAGAZ_DATABASE_URL"] = "postgresql+psycopg://nobody:secret@127.0.0.1:1/none"
    extension = SagazExtension(app)
    app.register_blueprint(create_health_blueprint(url_prefix="/ops", name="ops_health"))
    try:
        response = app.test_client().get("/ops/health")
    finally:
        extension.close()
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "failing"
    assert body["database"] == "unavailable"
    assert "secret" not in response.text
    assert "127.0.0.1" not in response.text


def test_without_a_database_health_says_not_configured() -> None:
    app = Flask(__name__)
    SagazExtension(app)
    app.register_blueprint(create_health_blueprint())
    response = app.test_client().get("/sagaz/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "database": "not configured"}


def test_path_and_name_as_in_every_adapter() -> None:
    app = Flask(__name__)
    extension = SagazExtension(app)
    app.register_blueprint(create_health_blueprint(path="/ops/health", name="ops"))
    with app.test_request_context():
        from flask import url_for

        assert url_for("ops.sagaz_health") == "/ops/health"
    assert app.test_client().get("/ops/health").get_json()["database"] == "not configured"
    extension.close()
