"""`JSONText`: the column type of every JSON document sagaz stores (contexts, step
results, payloads, headers), which reads back exactly the value that was written.

Binary JSON would not: PostgreSQL's JSONB normalises numbers (``-0.0`` reads back as
``0``, ``1e16`` as an integer), and a document in SQLite's ``JSON`` column - NUMERIC
affinity - that is a bare number is converted (``1.0`` to ``1``, ``2**64`` rounded,
``10**599`` to infinity). So the document is encoded by sagaz itself
(`sagaz._json.encode_document`: Python's own `json`, floats by their shortest repr,
integers in full, keys in insertion order) and stored as that text: in a ``json`` column
on PostgreSQL (which keeps the text as given) and as a UTF-8 BLOB in SQLite's ``JSON``
column (a BLOB is never converted by affinity). It is read as text (``CAST(... AS TEXT)``
in the SELECT or RETURNING) and decoded by sagaz, whatever JSON serializer or
deserializer the application's engine was configured with.

Python ``None`` is SQL NULL (COALESCE merges rely on it), except in a column built with
``json_null=True`` (the outbox payload), where it is the JSON document ``null``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import TypeEngine

from sagaz._json import decode_document, encode_document


class JSONText(sa.types.TypeDecorator[Any]):
    """A JSON document stored as sagaz's own text (see the module docstring)."""

    impl = sa.JSON
    cache_ok = True

    def __init__(self, *, json_null: bool = False) -> None:
        super().__init__(none_as_null=True)
        self.json_null = json_null

    @property
    def should_evaluate_none(self) -> bool:  # type: ignore[override]
        """With `json_null`, None is sent through the bind processor (as ``null``)."""
        return self.json_null

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(postgresql.JSON(none_as_null=True))
        return dialect.type_descriptor(sa.JSON(none_as_null=True))

    def bind_processor(self, dialect: Dialect) -> Callable[[Any], Any]:
        as_blob = dialect.name != "postgresql"
        json_null = self.json_null

        def process(value: Any) -> Any:
            if value is None and not json_null:
                return None
            text = encode_document(value)
            return text.encode() if as_blob else text

        return process

    def result_processor(self, dialect: Dialect, coltype: object) -> Callable[[Any], Any]:
        def process(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, bytes | bytearray | memoryview):
                value = bytes(value).decode()
            if isinstance(value, str):
                return decode_document(value)
            return value  # a statement that bypassed column_expression (already parsed)

        return process

    def column_expression(self, column: ColumnElement[Any]) -> ColumnElement[Any]:
        # The stored text itself, not what the driver or engine would parse it into.
        return sa.type_coerce(sa.cast(column, sa.Text()), self)
