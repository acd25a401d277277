"""`start_saga`: start a saga inside the caller's own transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from sagaz._json import ensure_json_object, text_problem
from sagaz._util import random_uuid, utcnow
from sagaz.context import current_correlation_id
from sagaz.errors import InvalidContextError, UnknownSagaError
from sagaz.registry import registry
from sagaz.saga import Saga
from sagaz.signals import saga_signal
from sagaz.store.operations import pending_saga_row
from sagaz.store.schema import sagas
from sagaz.store.statements import SAGA_CHANNEL
from sagaz.store.unit_of_work import AnySession, queue_row, sync_session_of
from sagaz.tracing import current_trace_context

#: Namespace of the deterministic saga ids derived from (saga name, idempotency key).
SAGA_ID_NAMESPACE = uuid.UUID("5a6a2c1e-3f0b-4b8e-9a8e-0d5a9a7c2b11")

MAX_IDEMPOTENCY_KEY_LENGTH = 255
"""The longest idempotency key (the length of its column in `sagaz_sagas`)."""


def saga_id_for(saga_name: str, idempotency_key: str) -> str:
    """The id a saga started with `idempotency_key` gets: the same for every repeat."""
    return str(uuid.uuid5(SAGA_ID_NAMESPACE, f"{saga_name}\x00{idempotency_key}"))


def start_saga(
    session: AnySession,
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
) -> str:
    """Add a PENDING saga to `session` and return its id; a worker runs it after commit.

    Guarantees: the saga row is written through `session`'s own connection, in its flush
    or commit - never committed here, never on another connection, and no outbox row. If
    the transaction (or the savepoint around this call) rolls back, the saga does not
    exist, even when the session is reused afterwards. With `idempotency_key`, every start
    of the same saga with the same key returns the same id and creates one saga, also
    under concurrent requests (the first committed context wins).

    Nothing is awaited, so the call is the same for `Session` and `AsyncSession`. Raises,
    before anything is queued: TypeError for another kind of session, UnknownSagaError
    for a saga no worker could resolve, SagaRegistryError for a saga instance other than
    the one registered under its name (a worker would run the registered one),
    InvalidContextError for a context that is not JSON or could not be read back (naming
    the key; see `sagaz._json`) or an idempotency key that is not a non-empty str of at
    most 255 characters without NUL characters or lone surrogates.
    """
    sync_session = sync_session_of(session, "start_saga")
    row = build_saga_row(saga, context, idempotency_key=idempotency_key)
    queue_row(sync_session, sagas, row, channel=SAGA_CHANNEL, signal=saga_signal)
    return str(row["id"])


def build_saga_row(
    saga: type[Saga] | Saga | str,
    context: Mapping[str, Any],
    *,
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """The PENDING row of `sagaz_sagas` that `start_saga` writes, validated; no I/O.

    Its "id" is `saga_id_for(name, idempotency_key)` with a key, else a random UUID; its
    correlation id is the current scope's, its trace context the current span's (see
    `sagaz.tracing`). Raises as `start_saga` does (TypeError, UnknownSagaError,
    SagaRegistryError, InvalidContextError). For adapters that write the row through a
    connection of their own framework (e.g. Django's).
    """
    name = _registered_name(saga)
    document = ensure_json_object(context, "context")
    if idempotency_key is None:
        saga_id = random_uuid()
    else:
        _check_idempotency_key(idempotency_key)
        saga_id = saga_id_for(name, idempotency_key)
    return pending_saga_row(
        saga_id,
        name,
        document,
        idempotency_key=idempotency_key,
        correlation_id=current_correlation_id(),
        now=utcnow(),
        trace_context=current_trace_context(),
    )


def _registered_name(saga: type[Saga] | Saga | str) -> str:
    if isinstance(saga, str):
        name = saga
    elif isinstance(saga, Saga):
        name = saga.name
    elif isinstance(saga, type) and issubclass(saga, Saga) and saga.saga_name:
        name = saga.saga_name
    else:
        raise TypeError(f"start_saga needs a Saga class, instance or name, got {saga!r:.80}")
    if name not in registry:
        raise UnknownSagaError(
            f"saga '{name}' is not registered, so no worker could run it; define it at "
            "module level (or call .register() on an imperative saga) before starting it"
        )
    if not isinstance(saga, str):
        registry.check_registered(name, saga)
    return name


def _check_idempotency_key(key: object) -> None:
    if not isinstance(key, str) or not key or len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        got = f"{len(key)} characters" if isinstance(key, str) and key else f"{key!r:.80}"
        raise InvalidContextError(
            f"idempotency_key must be a non-empty str of at most "
            f"{MAX_IDEMPOTENCY_KEY_LENGTH} characters, got {got}"
        )
    problem = text_problem(key)
    if problem is not None:
        raise InvalidContextError(f"idempotency_key contains {problem}, which cannot be stored")
