"""The Flask app `flask sagaz worker` runs in tests/integrations/test_flask_worker_settings.py:
its retry settings exist only in its own app.config."""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from sagaz.integrations.flask import SagazExtension

db = SQLAlchemy()
sagaz = SagazExtension()


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["SETTINGS_TEST_DATABASE_URL"]
    app.config["SAGAZ_MAX_RETRIES"] = 2
    app.config["SAGAZ_RETRY_BACKOFF"] = "0"  # a string, as from the environment: converted
    app.config["SAGAZ_LEASE_SECONDS"] = 2
    db.init_app(app)
    sagaz.init_app(app, db)
    return app
