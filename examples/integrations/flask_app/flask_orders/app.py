"""The Flask application factory: ``flask --app flask_orders run``.

Configured the Flask way: ``FLASK_``-prefixed environment variables land in
``app.config`` (``app.config.from_prefixed_env()``), e.g.
``FLASK_SQLALCHEMY_DATABASE_URI`` (default: a SQLite file in the temporary directory)
and ``FLASK_SAGAZ_BROKER_URL``. sagaz's tables live in the app's database.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask, abort, g, request
from sqlalchemy import update

from flask_orders.models import Order, db
from flask_orders.sagas import OrderSaga
from sagaz import outbox
from sagaz.integrations.flask import SagazExtension, health_blueprint
from sagaz.store.stores import SagaStore

DEFAULT_DATABASE_URL = f"sqlite:///{Path(tempfile.gettempdir()) / 'sagaz-flask-orders.db'}"

sagaz = SagazExtension()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = DEFAULT_DATABASE_URL
    app.config.from_prefixed_env()
    app.config.update(config or {})
    db.init_app(app)
    sagaz.init_app(app, db)
    app.register_blueprint(health_blueprint)
    with app.app_context():
        db.create_all()  # the application's own table; sagaz's: `flask sagaz db upgrade`

    @app.post("/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        """Order row, saga and event commit together in db.session.commit(); a worker
        (`flask sagaz worker`) runs the saga."""
        order = _place()
        order.saga_id = sagaz.start_saga(
            OrderSaga, _saga_context(order), idempotency_key=f"order-{order.id}"
        )
        outbox.add(db.session, "orders.placed", _saga_context(order), key=str(order.id))
        db.session.commit()
        return {
            "order_id": order.id,
            "saga_id": order.saga_id,
            "correlation_id": g.sagaz_context.correlation_id,
        }, 201

    @app.post("/orders/now")
    def create_order_now() -> tuple[dict[str, Any], int]:
        """Commit the order, then run its saga in this request (`run_sync` blocks until
        the saga finished) and answer with the outcome."""
        order = _place()
        order_id, context = order.id, _saga_context(order)
        outbox.add(db.session, "orders.placed", context, key=str(order_id))
        db.session.commit()  # the saga's ship step updates the order: commit it first
        result = sagaz.run_sync(OrderSaga, context)
        db.session.execute(update(Order).where(Order.id == order_id).values(saga_id=result.saga_id))
        db.session.commit()
        return {"order_id": order_id, "saga_id": result.saga_id, "saga": result.status.value}, 201

    @app.get("/orders/<int:order_id>")
    def read_order(order_id: int) -> dict[str, Any]:
        order = db.get_or_404(Order, order_id)
        saga = SagaStore(db.engine).get(order.saga_id) if order.saga_id else None
        return {
            "order_id": order.id,
            "item": order.item,
            "total_cents": order.total_cents,
            "status": order.status,
            "saga": None
            if saga is None
            else {"id": saga.saga_id, "status": saga.status.value, "error": saga.error},
        }

    return app


def _place() -> Order:
    body = request.get_json(silent=True) or {}
    item, quantity, price = body.get("item"), body.get("quantity"), body.get("unit_price_cents")
    if not (isinstance(item, str) and 0 < len(item) <= 100):
        abort(400, "item: a name of 1 to 100 characters")
    if not (isinstance(quantity, int) and 0 < quantity <= 1000):
        abort(400, "quantity: 1 to 1000")
    if not (isinstance(price, int) and price > 0):
        abort(400, "unit_price_cents: a positive integer")
    order = Order(item=item, quantity=quantity, total_cents=quantity * price)
    db.session.add(order)
    db.session.flush()  # assigns order.id
    return order


def _saga_context(order: Order) -> dict[str, Any]:
    return {"order_id": order.id, "item": order.item, "total_cents": order.total_cents}
