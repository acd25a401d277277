"""The Flask + Flask-SQLAlchemy applications the Flask integration tests drive."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask, abort, g, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from sagaz import outbox
from sagaz.integrations.flask import SagazExtension, health_blueprint
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from tests.integrations.integration_helpers import IntegrationOrderSaga, order_lines


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "fl_orders"
    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(sa.String(100))


class Invoice(db.Model):  # type: ignore[name-defined,misc]
    """An application model on the "billing" bind (another database or schema)."""

    __bind_key__ = "billing"
    __tablename__ = "fl_invoices"
    id: Mapped[int] = mapped_column(primary_key=True)
    amount: Mapped[int]


def counts(engine: sa.Engine) -> tuple[int, int, int]:
    """(orders, sagas, outbox events) committed in the database `engine` reaches."""
    with engine.connect() as connection:
        return (
            connection.scalar(sa.select(sa.func.count()).select_from(Order.__table__)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(sagas)) or 0,
            connection.scalar(sa.select(sa.func.count()).select_from(outbox_table)) or 0,
        )


def build_app(
    database_url: str,
    *,
    binds: dict[str, str] | None = None,
    extension: SagazExtension | None = None,
    create_tables: bool = True,
    **sagaz_options: Any,
) -> tuple[Flask, SagazExtension]:
    """An order service: ``POST /orders`` adds an Order, starts a saga and adds an
    outbox event through ``db.session``, then does what ``mode`` says."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    app.config["SQLALCHEMY_BINDS"] = dict(binds or {})
    db.init_app(app)
    if extension is None:
        extension = SagazExtension(app, db, **sagaz_options)
    else:
        extension.init_app(app, db)
    app.register_blueprint(health_blueprint)
    if create_tables:
        with app.app_context():
            db.create_all(bind_key=None)
            if binds and "billing" in binds:
                db.create_all(bind_key="billing")

    @app.post("/orders")
    def create_order() -> tuple[dict[str, Any], int]:
        mode = request.args.get("mode", "ok")
        order = Order(item=request.args.get("item", "book"))
        db.session.add(order)
        db.session.flush()
        saga_id = extension.start_saga(
            IntegrationOrderSaga,
            {"n": order.id},
            idempotency_key=request.args.get("key"),
        )
        event_id = outbox.add(
            db.session, "orders.created", {"order_id": order.id}, key=str(order.id)
        )
        if mode == "raise":
            raise RuntimeError("the view failed after starting its saga")
        if mode == "abort":
            abort(409)
        if mode == "rollback":
            db.session.rollback()
            return {"rolled_back": True}, 200
        if mode == "deferred":  # violates a deferred foreign key: only the commit sees it
            db.session.execute(sa.insert(order_lines).values(order_id=999_999_999))
        if mode != "nocommit":
            db.session.commit()
        return {
            "order_id": order.id,
            "saga_id": saga_id,
            "event_id": event_id,
            "correlation_id": g.sagaz_context.correlation_id,
        }, 201

    @app.post("/invoices")
    def create_invoice() -> tuple[dict[str, Any], int]:
        """An application row on the "billing" bind with a saga and an event."""
        invoice = Invoice(amount=int(request.args.get("amount", "10")))
        db.session.add(invoice)
        if request.args.get("order"):
            db.session.add(Order(item="with-invoice"))
        db.session.flush()
        saga_id = extension.start_saga(IntegrationOrderSaga, {"n": invoice.id})
        outbox.add(db.session, "invoices.created", {"invoice_id": invoice.id})
        db.session.commit()
        return {"invoice_id": invoice.id, "saga_id": saga_id}, 201

    @app.post("/run")
    def run_saga() -> dict[str, Any]:
        context = {"n": request.args.get("n", "run"), "fail": "fail" in request.args}
        result = extension.run_sync(IntegrationOrderSaga, context)
        return {
            "saga_id": result.saga_id,
            "status": result.status.value,
            "correlation_id": g.sagaz_context.correlation_id,
        }

    @app.post("/run-async")
    async def run_saga_from_async_view() -> dict[str, Any]:
        asyncio.get_running_loop()  # this view runs on an event loop of its own
        result = extension.run_sync(IntegrationOrderSaga, {"n": "async-view"})
        return {"saga_id": result.saga_id, "status": result.status.value}

    @app.get("/context")
    def context() -> dict[str, Any]:
        return {"correlation_id": g.sagaz_context.correlation_id}

    @app.get("/own-header")
    def own_header() -> tuple[dict[str, Any], int, dict[str, str]]:
        return {}, 200, {"X-Correlation-ID": "set-by-the-view"}

    return app, extension


def dispose_db_engines(app: Flask) -> None:
    """Close the Flask-SQLAlchemy pools of `app` (they belong to the db, not to sagaz)."""
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@contextmanager
def running(app: Flask, extension: SagazExtension) -> Iterator[Flask]:
    """`app` for the duration of a test; then sagaz closed and the db's pools disposed."""
    try:
        yield app
    finally:
        extension.close()
        dispose_db_engines(app)
