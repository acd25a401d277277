"""`atomic_saga_start` and `atomic_outbox_add`: sagaz's session-bound API for Django's
`transaction.atomic()`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sagaz.integrations.django.conf import get_settings
from sagaz.integrations.django.storage import DjangoSagaStorage, NotInAtomicBlockError
from sagaz.saga import Saga

__all__ = ["NotInAtomicBlockError", "atomic_outbox_add", "atomic_saga_start"]


def atomic_saga_start(
    saga_class: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    using: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    """Start a saga inside the current ``transaction.atomic()`` block and return its id;
    a worker (`manage.py sagaz_worker`) runs it once the block commits.

    The saga row is written now, through Django's own connection for `using` (default:
    ``settings.SAGAZ["DATABASE"]``, else ``"default"``), so it commits together with the
    application's ORM writes, and an exception that rolls the block back - or a nested
    ``atomic()`` savepoint around this call - removes it. No second connection is opened.
    With `idempotency_key`, repeats return the same id and create one saga (the id is
    `sagaz.start.saga_id_for(saga name, key)`, as with `sagaz.start_saga`).

    Raises, writing nothing: NotInAtomicBlockError outside ``atomic()``; UnknownSagaError
    for a saga no worker could resolve; InvalidContextError for a context that is not
    JSON (naming the key) or a bad idempotency key.
    """
    return DjangoSagaStorage(using or get_settings().database).start_saga(
        saga_class, context, idempotency_key=idempotency_key
    )


def atomic_outbox_add(
    topic: str,
    payload: Any,
    *,
    key: str | None = None,
    headers: Mapping[str, str] | None = None,
    using: str | None = None,
    saga_id: str | None = None,
) -> str:
    """Add an outbox event inside the current ``transaction.atomic()`` block and return
    its id; the outbox relay publishes it once the block commits.

    Same transaction rules as `atomic_saga_start`; same event rules as
    `sagaz.outbox.add` (the request's correlation id becomes the `correlation-id` header;
    events with the same `key` are published in order). Raises NotInAtomicBlockError
    outside ``atomic()`` and InvalidContextError for a bad topic, payload, key or headers,
    writing nothing.
    """
    return DjangoSagaStorage(using or get_settings().database).add_event(
        topic, payload, key=key, headers=headers, saga_id=saga_id
    )
