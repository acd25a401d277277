"""The journal: the one interface through which the engine reports every transition.

The engine knows nothing about storage. It calls `SagaJournal.record` for each state
transition and `SagaJournal.load` to resume a run; a store decides how to persist them.
Two properties every implementation must keep:

* **Fencing.** A transition may carry a `Fence` (the owner and token of the lease under
  which it is written). A journal that holds a newer lease for the saga must refuse the
  write with `LeaseLostError`, and the engine then stops the run without touching the saga
  again.
* **Group commit is allowed.** `record` may hold a transition back and write it together
  with transitions of other sagas running concurrently, as long as it returns only once
  the transition is durable.

The transitions, the snapshot and `apply_transition`, the state machine every journal
shares, live in `sagaz.state` (and are importable from here too).
"""

from __future__ import annotations

import asyncio
import warnings
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from sagaz._util import utcnow as utcnow  # re-exported for sagaz.integrations (issue 12)
from sagaz.errors import LeaseLostError
from sagaz.state import (
    STEP_STATUS_AFTER,
    Fence,
    SagaSnapshot,
    Transition,
    TransitionKind,
    apply_transition,
)
from sagaz.types import JSONDict, SagaStatus, StepOutcome

__all__ = [
    "STEP_STATUS_AFTER",
    "WRITE_BEHIND",
    "Fence",
    "MemoryJournal",
    "SagaJournal",
    "SagaSnapshot",
    "TransactionalJournal",
    "TransactionalStepCall",
    "Transition",
    "TransitionKind",
    "TransitionListener",
    "apply_transition",
    "notify_listeners",
    "utcnow",
]


def __getattr__(name: str) -> Any:
    if name == "StepSnapshot":
        warnings.warn(
            "sagaz.journal.StepSnapshot is deprecated: a step's record is sagaz.StepOutcome",
            DeprecationWarning,
            stacklevel=2,
        )
        return StepOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


WRITE_BEHIND = frozenset({TransitionKind.STEP_STARTED})
"""Transitions a journal may persist after `record` returns (see `SagaJournal.record`)."""


@runtime_checkable
class SagaJournal(Protocol):
    """Where the engine records transitions and reads a saga back to resume it."""

    async def record(self, transition: Transition) -> None:
        """Persist `transition`; return only once it is durable.

        Raises LeaseLostError when the transition's fence is no longer the saga's lease.

        One exception, which a journal may take: a STEP_STARTED transition (see
        `WRITE_BEHIND`) may be written behind, returning before it is durable, provided it
        becomes durable no later than the next transition of the same saga and before a
        transactional step of that saga opens its transaction. A crash can then lose only
        the start record of a step whose outcome was never recorded: the resumed run
        starts that step again either way.
        """

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        """The saga as last recorded, or None when the journal has never seen it."""


@dataclass(frozen=True, slots=True)
class TransactionalStepCall:
    """A step that asked for a database session, handed to the journal to run.

    The journal opens a transaction, calls `function(context, session=...)` (an
    `AsyncSession` for an async step; a sync `Session`, in a worker thread, for a plain
    def), checks the return value with `check_result`, writes `completion(result)`
    through the same transaction and commits: the step's writes, its outbox events and
    its completion record commit together or not at all.
    """

    saga_id: str
    function: Callable[..., Any]
    context: Mapping[str, Any]
    is_async: bool
    check_result: Callable[[Any], JSONDict]
    completion: Callable[[JSONDict], Transition]


@runtime_checkable
class TransactionalJournal(Protocol):
    """A journal that can run a step inside the transaction that records its completion."""

    async def run_step_transaction(self, call: TransactionalStepCall) -> JSONDict:
        """Run the step and commit its completion with its writes; returns its result.

        Raises what the step raised (nothing committed), or LeaseLostError when the
        completion's fence is refused (nothing committed).
        """


TransitionListener = Callable[[Transition], Awaitable[None] | None]
"""Observes transitions after the journal recorded them (metrics, tracing, logging)."""


class MemoryJournal:
    """A journal kept in process memory, with the same fencing rules as the SQL stores.

    Used by `Saga.run` when no store is configured, and by tests. Not durable.
    """

    def __init__(self) -> None:
        self._sagas: dict[str, SagaSnapshot] = {}
        self._leases: dict[str, Fence] = {}
        self._lock = asyncio.Lock()
        self.transitions: list[Transition] = []

    async def record(self, transition: Transition) -> None:
        async with self._lock:
            lease = self._leases.get(transition.saga_id)
            if lease is not None and transition.fence != lease:
                raise LeaseLostError(
                    f"saga {transition.saga_id} is leased to {lease.owner} "
                    f"(token {lease.token}); write by {transition.fence} refused"
                )
            snapshot = self._sagas.get(transition.saga_id)
            if snapshot is None:
                snapshot = self._sagas[transition.saga_id] = SagaSnapshot(
                    saga_id=transition.saga_id,
                    saga_name=transition.saga_name,
                    status=SagaStatus.PENDING,
                    context={},
                    created_at=transition.at,
                )
            apply_transition(snapshot, transition)
            self.transitions.append(transition)

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        snapshot = self._sagas.get(saga_id)
        if snapshot is None:
            return None
        return replace(
            snapshot,
            context=dict(snapshot.context),
            steps={name: replace(step) for name, step in snapshot.steps.items()},
        )

    def lease(self, saga_id: str, owner: str) -> Fence:
        """Take the saga's lease for `owner`, fencing out every earlier holder."""
        previous = self._leases.get(saga_id)
        fence = Fence(owner=owner, token=(previous.token + 1) if previous else 1)
        self._leases[saga_id] = fence
        return fence

    def kinds(self, saga_id: str) -> list[tuple[TransitionKind, str | None]]:
        """The (kind, step) sequence recorded for one saga, for tests and debugging."""
        return [(t.kind, t.step) for t in self.transitions if t.saga_id == saga_id]


async def notify_listeners(
    listeners: tuple[TransitionListener, ...], transition: Transition, log: Any
) -> None:
    """Call every listener; a failing listener is logged and never breaks the saga."""
    for listener in listeners:
        try:
            outcome = listener(transition)
            if outcome is not None:
                await outcome
        except Exception:
            log.warning("sagaz listener %r failed on %s", listener, transition.kind, exc_info=True)
