"""What a running step can know about its own run: the lease deadline and `current_run()`.

A worker holds each saga under a lease that expires unless renewed. A paused or starved
process cannot tell from the database that its lease ran out - asking it takes a round
trip, and the process may stall again right after. `LeaseClock` keeps the lease's deadline
on this process's monotonic clock: the deadline is taken from the START of the claim or
renewal request that granted the lease (the database may have written its expiry any time
after that), minus a safety margin. Past the deadline the run starts no step, no
compensation and no commit; the engine checks it before every journal write and before
calling a step or a compensation.

Inside a step (action or compensation), `sagaz.current_run()` returns the `StepRun`:
the saga id, the step, its attempt, the run's fencing token, a per-attempt idempotency
key and `lease_held()`. It is a context variable, so it reaches async steps, plain `def`
steps run in threads and transactional steps alike.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from sagaz.errors import LeaseLostError

_IDEMPOTENCY_NAMESPACE = uuid.UUID("5a6a2c1e-7d0b-5f6e-9c3a-1b2d3e4f5a6b")


class LeaseClock:
    """A lease's deadline on this process's monotonic clock.

    `granted(started_at)` moves the deadline to `started_at + lease_seconds - margin`,
    where `started_at` is `clock()` read just before the claim or renewal request was
    sent (never after its answer: the time the answer took may already be gone). A
    renewal that failed leaves the deadline where it was; one that found the lease taken
    over calls `lost()`. Never raises from `held()`.
    """

    def __init__(
        self,
        lease_seconds: float,
        margin_seconds: float,
        started_at: float,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 <= margin_seconds < lease_seconds:
            raise ValueError(
                f"the lease margin must be >= 0 and < lease_seconds ({lease_seconds}), "
                f"got {margin_seconds}"
            )
        self.lease_seconds = lease_seconds
        self.margin_seconds = margin_seconds
        self.clock = clock
        self.deadline = -math.inf
        self._lost = False
        self.granted(started_at)

    def granted(self, started_at: float) -> None:
        """A claim or renewal sent at `started_at` (this clock) succeeded (ignored once
        the lease was `lost()`)."""
        if self._lost:
            return
        expires = started_at + self.lease_seconds - self.margin_seconds
        self.deadline = max(self.deadline, expires)

    def lost(self) -> None:
        """The lease is gone (a renewal found another owner, or the run is stopped for a
        cancel request): nothing more may start, whatever a later renewal says."""
        self._lost = True
        self.deadline = -math.inf

    def held(self) -> bool:
        """True while the deadline has not passed (no database round trip)."""
        return self.clock() < self.deadline

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it passed)."""
        return self.deadline - self.clock()

    def check(self, saga_id: str, what: str) -> None:
        """Raise LeaseLostError, naming `what` was not done, once the deadline passed."""
        if not self.held():
            raise LeaseLostError(
                f"saga {saga_id}: {what} not started, this worker's lease deadline passed "
                f"({-self.remaining():.3f}s ago by its own clock); another worker may own it"
            )


@dataclass(frozen=True, slots=True)
class StepRun:
    """The run of one step attempt (or compensation attempt), as the step sees it.

    `fence` is the saga's fencing token for this run: it grows with every claim of the
    saga, so a downstream service that remembers the highest token it saw per saga can
    refuse a call from an older holder. It is 0 when the saga runs without a worker.
    `idempotency_key` is unique per attempt of this step in this run (a uuid5 of saga id,
    step, action/compensation, fence and attempt); `step_key` is the same for every
    attempt of the step (for a service that should do the step's work once, whoever
    retries it).
    """

    saga_id: str
    saga_name: str
    step: str
    attempt: int
    fence: int
    compensating: bool = False
    lease: LeaseClock | None = field(default=None, repr=False, compare=False)

    @property
    def step_key(self) -> str:
        """`"<saga id>:<step>"` (`":undo"` appended for a compensation): stable across
        attempts and runs."""
        return f"{self.saga_id}:{self.step}" + (":undo" if self.compensating else "")

    @property
    def idempotency_key(self) -> str:
        """A key for this attempt alone: a uuid5 of step key, fence and attempt."""
        name = f"{self.step_key}:{self.fence}:{self.attempt}"
        return str(uuid.uuid5(_IDEMPOTENCY_NAMESPACE, name))

    def lease_held(self) -> bool:
        """True while this run's lease has not passed its deadline by this process's
        monotonic clock (always True without a worker). Cheap: no database round trip.

        Call it right before an irreversible call: False means another worker may own the
        saga already (and may be compensating this very step) - do not make the call;
        return or raise, the run is stopping anyway."""
        return self.lease is None or self.lease.held()

    def ensure_lease(self) -> None:
        """Raise LeaseLostError unless `lease_held()`."""
        if self.lease is not None:
            self.lease.check(self.saga_id, f"step '{self.step}' (its irreversible call)")


_current: ContextVar[StepRun | None] = ContextVar("sagaz_current_run", default=None)


def current_run() -> StepRun:
    """The `StepRun` of the step (or compensation) calling it.

    Raises LookupError outside a step."""
    run = _current.get()
    if run is None:
        raise LookupError("sagaz.current_run() is only available inside a running step")
    return run


def set_current_run(run: StepRun | None) -> object:
    """Make `run` the current one; returns the token for `reset_current_run`."""
    return _current.set(run)


def reset_current_run(token: object) -> None:
    _current.reset(token)  # type: ignore[arg-type]
