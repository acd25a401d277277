"""Flask integration: a Flask-SQLAlchemy extension whose sagas and outbox events commit
with ``db.session``.

    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from sagaz import outbox
    from sagaz.integrations.flask import SagazExtension, health_blueprint

    db = SQLAlchemy()
    sagaz = SagazExtension()

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg://app@db/app"
    db.init_app(app)
    sagaz.init_app(app, db)                     # sagaz's tables live in the same database
    app.register_blueprint(health_blueprint)    # optional: GET /sagaz/health

    @app.post("/orders")
    def create_order():
        order = Order(total=42); db.session.add(order); db.session.flush()
        saga_id = sagaz.start_saga(OrderSaga, {"order_id": order.id})   # for a worker
        outbox.add(db.session, "orders.created", {"order_id": order.id})
        db.session.commit()             # the order, the saga and the event - or none
        return {"saga_id": saga_id}, 201

    @app.post("/quotes")
    def quote():                        # runs the saga here; the request waits for it
        return {"status": sagaz.run_sync(QuoteSaga, request.json).status.value}

Flask and Flask-SQLAlchemy are imported only inside this package, a module per concern:
`extension` (SagazExtension), `settings` (app.config -> SagaConfig), `state` (one app's
runtime), `hooks` (request hooks), `binds` (which connection sagaz's rows use), `cli`
(``flask sagaz``) and `health`. See docs/flask.md.
"""

from __future__ import annotations

from sagaz._util import requires_extra

with requires_extra("flask", "flask and flask-sqlalchemy", "sagaz.integrations.flask"):
    import flask  # noqa: F401
    import flask_sqlalchemy  # noqa: F401

from sagaz.errors import CrossBindError
from sagaz.integrations.flask.cli import sagaz_cli
from sagaz.integrations.flask.extension import SagazExtension
from sagaz.integrations.flask.health import create_health_blueprint, health_blueprint
from sagaz.integrations.flask.state import EXTENSION_KEY

__all__ = [
    "EXTENSION_KEY",
    "CrossBindError",
    "SagazExtension",
    "create_health_blueprint",
    "health_blueprint",
    "sagaz_cli",
]
