"""The SQL saga stores: `SagaStore` over a sync `Engine`, `AsyncSagaStore` over an
`AsyncEngine`. Both run the same connection-level operations (`sagaz.store.operations`).

`AsyncSagaStore` is the engine's durable journal. Its `record` group-commits: while one
batch is being written, transitions from every concurrently running saga queue up and go
into the next transaction together, so throughput grows with concurrency instead of being
capped at one commit per transition. `record` returns only after the transaction holding
the transition committed, and raises LeaseLostError if fencing refused it.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz.errors import DatabaseUnavailableError, LeaseLostError
from sagaz.journal import WRITE_BEHIND, SagaSnapshot, TransactionalStepCall, Transition
from sagaz.store import operations
from sagaz.store.engines import create_engine
from sagaz.store.failures import describe_failure, is_fatal
from sagaz.types import JSONDict, SagaStatus

log = logging.getLogger("sagaz.store")


_Entry = tuple[Transition, "asyncio.Future[None]"]


def _halves_by_saga(batch: list[_Entry]) -> tuple[list[_Entry], list[_Entry]] | None:
    """`batch` split into two halves with no saga in both (order kept), or None for a
    batch of one saga."""
    saga_ids = list(dict.fromkeys(transition.saga_id for transition, _future in batch))
    if len(saga_ids) < 2:
        return None
    first = set(saga_ids[: len(saga_ids) // 2])
    return (
        [entry for entry in batch if entry[0].saga_id in first],
        [entry for entry in batch if entry[0].saga_id not in first],
    )


def is_connection_error(error: Exception) -> bool:
    """The database could not be reached or the connection broke: splitting the batch
    cannot help, every part would fail the same way. Never true for an `is_fatal` error
    (SQLite reports a missing table or column as an OperationalError too)."""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    if is_fatal(error):
        return False
    return isinstance(
        error, sa.exc.OperationalError | sa.exc.InterfaceError | OSError | TimeoutError
    )


def _lease_lost(transition: Transition) -> LeaseLostError:
    return LeaseLostError(
        f"saga {transition.saga_id}: {transition.kind.value} refused, the write's lease "
        f"{transition.fence} is not the saga's current lease"
    )


class SagaStore:
    """Reads and writes sagas through a sync SQLAlchemy engine (each call one transaction)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def record_many(self, transitions: Sequence[Transition]) -> None:
        """Persist transitions in one transaction; LeaseLostError if any was refused
        (the others are written)."""
        with self.engine.begin() as connection:
            refused = operations.write_transitions(connection, transitions)
        if refused:
            raise _lease_lost(transitions[min(refused)])

    def get(self, saga_id: str) -> SagaSnapshot | None:
        """A saga with its steps, or None."""
        with self.engine.connect() as connection:
            return operations.load_saga(connection, saga_id)

    def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SagaSnapshot]:
        """Sagas newest first, optionally filtered by status and name, paged."""
        with self.engine.connect() as connection:
            return operations.list_sagas(
                connection, status=status, name=name, limit=limit, offset=offset
            )


class AsyncSagaStore:
    """The durable journal over an `AsyncEngine`, with group commit."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        sync_engine: sa.Engine | None = None,
        max_batch: int = 1000,
    ) -> None:
        self.engine = engine
        self._sync_engine = sync_engine
        self._owns_sync_engine = False
        self.max_batch = max_batch
        self._queue: list[tuple[Transition, asyncio.Future[None]]] = []
        self._behind: dict[str, asyncio.Future[None]] = {}
        self._writer: asyncio.Task[None] | None = None

    async def record(self, transition: Transition) -> None:
        """Queue `transition` for the next group commit and wait until it committed.

        A STEP_STARTED transition is written behind (`sagaz.journal.WRITE_BEHIND`): it
        returns at once, and the single writer's FIFO order commits it no later than the
        saga's next transition. A failure to write it is logged; the saga's next awaited
        transition reports a lost lease.
        """
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((transition, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_queued(), name="sagaz:group-commit")
        if transition.kind in WRITE_BEHIND:
            self._behind[transition.saga_id] = future
            return
        await future

    async def _written_behind(self, saga_id: str) -> None:
        """Wait until the saga's written-behind transitions are committed (or failed)."""
        future = self._behind.get(saga_id)
        if future is not None:
            await asyncio.wait([future])

    async def _write_queued(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            await self._write_batch(batch)

    async def _write_batch(self, batch: list[tuple[Transition, asyncio.Future[None]]]) -> None:
        """Write `batch` in one transaction and settle its futures.

        When the transaction fails for a reason other than the connection (say a value
        the database refuses), the batch is split in two halves by saga and each is
        written apart, down to single sagas: one saga's bad write fails that saga alone,
        never the others that happened to share its batch. A saga's transitions stay
        together and in order."""
        transitions = [transition for transition, _future in batch]
        try:
            async with self.engine.begin() as connection:
                refused = await connection.run_sync(operations.write_transitions, transitions)
        except Exception as error:
            halves = None if is_connection_error(error) else _halves_by_saga(batch)
            if halves is None:
                for transition, future in batch:
                    self._settle(transition, future, error)
                return
            log.warning(
                "a group commit of %d transitions failed (%s); writing it in halves "
                "to isolate the saga that caused it",
                len(batch),
                describe_failure(error),
            )
            for half in halves:
                await self._write_batch(half)
            return
        except BaseException as error:  # cancelled: nothing is known to be written
            for transition, future in batch:
                self._settle(transition, future, error)
            raise
        for index, (transition, future) in enumerate(batch):
            self._settle(transition, future, _lease_lost(transition) if index in refused else None)

    def _settle(
        self, transition: Transition, future: asyncio.Future[None], error: BaseException | None
    ) -> None:
        if transition.kind in WRITE_BEHIND:
            # Nobody awaits it: resolve it (a waiting transactional step goes on) and log.
            if self._behind.get(transition.saga_id) is future:
                del self._behind[transition.saga_id]
            if error is not None:
                log.warning(
                    "saga %s: %s was not written: %s",
                    transition.saga_id,
                    transition.kind.value,
                    describe_failure(error),
                )
            if not future.done():
                future.set_result(None)
            return
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    @property
    def sync_engine(self) -> sa.Engine:
        """The sync engine plain-def transactional steps use (built from the async URL
        on first use unless one was given)."""
        if self._sync_engine is None:
            self._sync_engine = create_engine(self.engine.url)
            self._owns_sync_engine = True
        return self._sync_engine

    async def close(self) -> None:
        """Dispose of the sync engine this store built (the async one is the caller's)."""
        if self._owns_sync_engine and self._sync_engine is not None:
            self._sync_engine.dispose()
            self._sync_engine = None
            self._owns_sync_engine = False

    async def run_step_transaction(self, call: TransactionalStepCall) -> JSONDict:
        """Run a transactional step; its writes and its completion commit together.

        The step's written-behind start record commits first, so that it cannot land after
        (and overwrite) the completion this transaction commits."""
        await self._written_behind(call.saga_id)
        try:
            return await self._step_transaction(call)
        except sa.exc.DBAPIError as error:
            if is_connection_error(error):
                raise DatabaseUnavailableError(
                    f"saga {call.saga_id}: the database connection failed during a "
                    "transactional step"
                ) from error
            raise

    async def _step_transaction(self, call: TransactionalStepCall) -> JSONDict:
        if call.is_async:
            async with AsyncSession(self.engine) as session, session.begin():
                result = call.check_result(await call.function(call.context, session=session))
                connection = await session.connection()
                refused = await connection.run_sync(
                    operations.write_transitions, [call.completion(result)]
                )
                if refused:
                    raise _lease_lost(call.completion(result))
                return result
        abandoned = threading.Event()
        future = asyncio.get_running_loop().run_in_executor(
            None,
            contextvars.copy_context().run,
            self._run_sync_step_transaction,
            call,
            abandoned,
        )
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            abandoned.set()  # the thread rolls back instead of committing
            raise

    def _run_sync_step_transaction(
        self, call: TransactionalStepCall, abandoned: threading.Event
    ) -> JSONDict:
        with Session(self.sync_engine) as session, session.begin():
            result = call.check_result(call.function(call.context, session=session))
            completion = call.completion(result)
            refused = operations.write_transitions(session.connection(), [completion])
            if refused:
                raise _lease_lost(completion)
            if abandoned.is_set():
                raise asyncio.CancelledError("the step timed out or was cancelled")
            return result

    async def load(self, saga_id: str) -> SagaSnapshot | None:
        async with self.engine.connect() as connection:
            return await connection.run_sync(operations.load_saga, saga_id)

    get = load

    async def list(
        self,
        *,
        status: SagaStatus | str | None = None,
        name: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[SagaSnapshot]:
        async with self.engine.connect() as connection:
            return await connection.run_sync(
                lambda sync: operations.list_sagas(
                    sync, status=status, name=name, limit=limit, offset=offset
                )
            )
