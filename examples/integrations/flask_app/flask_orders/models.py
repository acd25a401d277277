"""The application's own table, on Flask-SQLAlchemy: sagaz's tables live next to it in
the same database (``flask --app flask_orders sagaz db upgrade`` creates them)."""

from __future__ import annotations

from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)


class Order(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int]
    total_cents: Mapped[int]
    # "placed" until the saga's ship step marks it "shipped" (in the step's transaction).
    status: Mapped[str] = mapped_column(String(20), default="placed")
    saga_id: Mapped[str | None] = mapped_column(String(36), default=None)
