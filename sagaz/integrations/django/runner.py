"""`run_saga`: run a saga to completion from a sync view, on one long-lived event loop.

Every call - from any number of server threads, and from a thread whose own event loop
is running - hands the saga to the same `EventLoopPortal` (`sagaz.integrations._core.portal`)
and blocks until it finished. There is no `asyncio.run` per request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from sagaz.config import SagaConfig
from sagaz.integrations._core.portal import EventLoopPortal, LazyPortal
from sagaz.integrations.django.conf import get_settings
from sagaz.saga import Saga
from sagaz.types import SagaResult

__all__ = ["close", "portal", "run_saga"]

_portal = LazyPortal("sagaz-django")


def portal() -> EventLoopPortal:
    """The portal `run_saga` runs sagas on: its loop and thread start with the first call
    and stop at `close()` or at interpreter exit."""
    return _portal.portal


def close() -> None:
    """Stop `run_saga`'s event loop and thread (runs still in progress are cancelled);
    the next `run_saga` starts a new one. Idempotent; for tests and orderly shutdowns."""
    _portal.close()


def run_saga(
    saga: type[Saga] | Saga,
    context: Mapping[str, Any] | None = None,
    *,
    saga_id: str | None = None,
) -> SagaResult:
    """Run `saga` in this process until it completed (or compensated) and return its
    result, blocking the calling thread meanwhile - like ``await saga.run(context)``.

    A Saga class is instantiated with the config of ``settings.SAGAZ`` (its step and
    saga defaults: retries, timeouts, failure strategy; its observability switches -
    METRICS needs the ``prometheus`` extra, MissingExtraError otherwise); an
    instance runs with its own config. The run is journaled in memory, not in the
    database: it is not atomic with the request's writes and nothing resumes it if the
    process dies - for that, start it with `atomic_saga_start` and let
    ``manage.py sagaz_worker`` run it. Async steps run on the portal's loop, so steps that
    use the Django ORM must be plain ``def`` steps (they run in threads; the ORM refuses
    to run on an event loop's thread), and they use their own connections, which do not
    see the request's uncommitted writes. Raises what `Saga.run` raises.
    """
    if isinstance(saga, type) and issubclass(saga, Saga):
        instance = saga(config=_run_config())
    elif isinstance(saga, Saga):
        instance = saga
    else:
        raise TypeError(f"run_saga needs a Saga class or instance, got {saga!r}")
    return _portal.call(instance.run, dict(context or {}), saga_id=saga_id)


def _run_config() -> SagaConfig:
    """settings.SAGAZ's config, with the listeners its observability switches (LOG_TRANSITIONS,
    METRICS, TRACING) ask for: the in-memory runs of `run_saga` initialise no config."""
    config = get_settings().saga_config()
    return dataclasses.replace(config, extra_listeners=config.build_listeners())
