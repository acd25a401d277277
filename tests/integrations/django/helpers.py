"""Reading what was committed, through a connection of its own (never the test's)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from sagaz.integrations.django.conf import database_url
from sagaz.store.engines import create_engine
from sagaz.store.schema import outbox, sagas


def committed(alias: str = "default") -> dict[str, list[Any]]:
    """Orders, sagas and outbox events committed in `alias`, read on a new connection."""
    engine = create_engine(database_url(alias), poolclass=sa.NullPool)
    try:
        with engine.connect() as connection:
            return {
                "orders": [
                    row.item
                    for row in connection.execute(
                        sa.text("SELECT item FROM orders_order ORDER BY id")
                    )
                ],
                "sagas": list(connection.execute(sa.select(sagas).order_by(sagas.c.created_at))),
                "events": list(connection.execute(sa.select(outbox).order_by(outbox.c.seq))),
            }
    finally:
        engine.dispose()
