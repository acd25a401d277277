"""`run_in_process`: what `Saga.run` does with a config that has a database."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sagaz.definition import SagaDefinition
from sagaz.journal import TransitionListener
from sagaz.types import SagaResult
from sagaz.worker.saga_worker import SagaWorker

if TYPE_CHECKING:
    from sagaz.config import SagaConfig


async def run_in_process(
    config: SagaConfig,
    definition: SagaDefinition,
    context: Mapping[str, Any],
    *,
    saga_id: str | None = None,
    listeners: Iterable[TransitionListener] = (),
) -> SagaResult:
    """Run `definition` here, durably, under a lease of its own (`SagaWorker.run_here`):
    recorded in `config`'s database already leased, renewed every third of
    `config.lease_seconds` while it runs, every write fenced - so no worker claims it
    while it runs, and one resumes it if this process dies. Runs with `config`'s run
    options and listeners, then `listeners`. Raises what `SagaWorker.run_here` raises.
    """
    worker = SagaWorker(
        config.engine,
        store=config.store,
        lease_seconds=config.lease_seconds,
        options=config.run_options(),
        listeners=config.listeners,
        owner=f"sagaz-in-process-{uuid.uuid4().hex[:12]}",
        listen=False,
    )
    return await worker.run_here(definition, context, saga_id=saga_id, listeners=listeners)
