"""The application's own table: sagaz's tables live next to it in the same database."""

from __future__ import annotations

from sqlalchemy import String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class Order(Base):
    __tablename__ = "orders"

    id: Mapped[int] = mapped_column(primary_key=True)
    item: Mapped[str] = mapped_column(String(100))
    quantity: Mapped[int]
    total_cents: Mapped[int]
    # "placed" until the saga's ship step marks it "shipped" (in the step's transaction).
    status: Mapped[str] = mapped_column(String(20), default="placed")
    saga_id: Mapped[str | None] = mapped_column(String(36), default=None)
