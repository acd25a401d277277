"""What every web adapter shares, written once and free of any framework import.

* **Correlation ids** - `correlation_id_from(raw_header)`: the client's value when it is
  at most 128 characters of ``[A-Za-z0-9._:-]``, otherwise a fresh id. A rejected value is
  never reflected anywhere. `validate_header_name` checks the configured header name.
* **The commit/rollback policy** - `finish_session` / `finish_session_sync`: commit when
  the handler returned, roll back when it raised, close either way; a commit that fails is
  rolled back and re-raised, so the adapter answers with an error, never with the
  handler's success response.
* **The event-loop portal** - `EventLoopPortal`: one long-lived event loop in a
  background thread that sync code (threaded servers, sync views) hands coroutines to,
  so async connection pools stay bound to one loop for the application's lifetime.
  `LazyPortal` starts one on first use - with a `SagaRuntime` on it, when asked - and
  starts a new one after `close()` (Flask's extension, Django's `run_saga`).
* **The health payload** - `check_health` / `check_health_sync` -> `HealthReport`.
* **The runtime** - `SagaRuntime` (in `sagaz.runtime`, re-exported here, as is
  `sagaz.background.BackgroundSagaRunner`): what an adapter starts with the application
  and stops with it. It imports the engine, worker and relay, so importing this module
  does too; the pieces above need none of them.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from sagaz.background import BackgroundRun, BackgroundSagaRunner
from sagaz.context import generate_correlation_id
from sagaz.errors import ConfigurationError
from sagaz.outbox.maintenance import OutboxHealth, outbox_health
from sagaz.runtime import SagaRuntime, find_runtime

__all__ = [
    "COMMIT_FAILED_NOTE",
    "CORRELATION_ID_HEADER",
    "MAX_CORRELATION_ID_LENGTH",
    "BackgroundRun",
    "BackgroundSagaRunner",
    "EventLoopPortal",
    "HealthReport",
    "LazyPortal",
    "SagaRuntime",
    "check_health",
    "check_health_sync",
    "correlation_id_from",
    "find_runtime",
    "finish_session",
    "finish_session_sync",
    "generate_correlation_id",
    "is_valid_correlation_id",
    "validate_header_name",
]

log = logging.getLogger("sagaz.integrations")
T = TypeVar("T")
P = ParamSpec("P")


# -- correlation ids --------------------------------------------------------------------

CORRELATION_ID_HEADER = "X-Correlation-ID"
"""The request and response header every adapter reads and echoes by default."""
MAX_CORRELATION_ID_LENGTH = 128
_CORRELATION_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_CORRELATION_ID_LENGTH}}}")


def is_valid_correlation_id(value: object) -> bool:
    """True for a str of 1 to 128 characters of ``[A-Za-z0-9._:-]`` (ASCII only)."""
    return isinstance(value, str) and _CORRELATION_ID.fullmatch(value) is not None


def correlation_id_from(raw: str | bytes | None) -> str:
    """The correlation id of a request whose header carried `raw`.

    A valid value (see `is_valid_correlation_id`) is kept; anything else - missing, empty,
    too long, control characters such as CR/LF, non-ASCII, undecodable bytes - is
    replaced by a fresh id, so a hostile value is never stored, logged or echoed. Bytes
    are read as ASGI/WSGI header bytes (latin-1).
    """
    if isinstance(raw, bytes):
        raw = raw.decode("latin-1")
    if raw is not None and is_valid_correlation_id(raw):
        return raw
    return generate_correlation_id()


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")


def validate_header_name(
    value: object, *, setting: str, error: Callable[[str], Exception] = ConfigurationError
) -> str:
    """`value` when it is a header name an adapter may read and echo (a str of ASCII
    letters, digits and ``-``, such as ``X-Request-ID``); otherwise raise `error` (default
    ConfigurationError, a ValueError) with a message naming `setting`."""
    if not isinstance(value, str) or _HEADER_NAME.fullmatch(value) is None:
        raise error(f"{setting} must be a header name such as X-Request-ID, got {value!r}")
    return value


# -- the commit/rollback policy ------------------------------------------------------------

COMMIT_FAILED_NOTE = (
    "sagaz: the commit of the request's session failed after the handler returned; "
    "the transaction was rolled back and nothing of the request was saved"
)


async def finish_session(session: AsyncSession, error: BaseException | None = None) -> None:
    """End a request's unit of work: commit if the handler returned (`error` is None),
    roll back if it raised, and close the session either way.

    A commit that fails (a deferred constraint, a serialization failure, a lost
    connection) is rolled back and re-raised with a note, so the adapter turns it into
    an error response instead of the handler's success. A failure while rolling back or
    closing is logged and never hides the error that caused it.
    """
    try:
        if error is None:
            try:
                await session.commit()
            except BaseException as commit_error:
                commit_error.add_note(COMMIT_FAILED_NOTE)
                await _quietly(session.rollback, "rolling back after a failed commit")
                raise
        else:
            await _quietly(session.rollback, "rolling back after the handler raised")
    finally:
        await _quietly(session.close, "closing the request's session")


def finish_session_sync(session: Session, error: BaseException | None = None) -> None:
    """`finish_session` for a sync `Session` (same policy, same guarantees)."""
    try:
        if error is None:
            try:
                session.commit()
            except BaseException as commit_error:
                commit_error.add_note(COMMIT_FAILED_NOTE)
                _quietly_sync(session.rollback, "rolling back after a failed commit")
                raise
        else:
            _quietly_sync(session.rollback, "rolling back after the handler raised")
    finally:
        _quietly_sync(session.close, "closing the request's session")


async def _quietly(operation: Callable[[], Awaitable[None]], doing: str) -> None:
    try:
        await operation()
    except Exception:
        log.warning("sagaz: %s failed", doing, exc_info=True)


def _quietly_sync(operation: Callable[[], None], doing: str) -> None:
    try:
        operation()
    except Exception:
        log.warning("sagaz: %s failed", doing, exc_info=True)


# -- the event-loop portal ------------------------------------------------------------------


class EventLoopPortal:
    """One long-lived event loop in a daemon thread, for calling async code from sync code.

    `call(fn, *args)` runs the coroutine `fn(*args)` on the portal's loop and blocks the
    calling thread until it finishes, returning its result or raising its exception. Any
    number of threads may call at once (threaded servers), also a thread whose own event
    loop is running (that loop is blocked meanwhile). Context variables - the request's
    correlation id - travel with the call. Because the loop lives as long as the portal,
    engines and pools created through it stay valid across calls, unlike `asyncio.run`
    per call.

    The loop starts on the first call. `close()` cancels what is still running, shuts the
    loop down and joins its thread; it also runs at interpreter exit. Close the resources
    you created on the loop (e.g. ``portal.call(config.close)``) before closing it.
    """

    def __init__(self, name: str = "sagaz-event-loop") -> None:
        self.name = name
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The portal's event loop (started if needed)."""
        return self._start()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._closed

    def _start(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._closed:
                raise RuntimeError(f"the event-loop portal {self.name!r} is closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._serve, args=(loop, ready), name=self.name, daemon=True
                )
                thread.start()
                ready.wait()
                self._loop, self._thread = loop, thread
                atexit.register(self.close)
            return self._loop

    @staticmethod
    def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        loop.run_forever()

    def call(
        self,
        function: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """Run `function(*args, **kwargs)` on the portal's loop; block until it is done.

        Raises RuntimeError when called from the portal's own thread (it would wait for
        itself) or after `close()`. If the calling thread is interrupted while waiting
        (KeyboardInterrupt, SystemExit), the coroutine is cancelled.
        """
        loop = self._start()
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                "EventLoopPortal.call() from the portal's own loop would wait for itself; "
                "await the coroutine instead"
            )
        future = asyncio.run_coroutine_threadsafe(_invoke(function, args, kwargs), loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self, timeout: float = 10.0) -> None:
        """Cancel the loop's remaining tasks, stop the loop and join its thread. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            loop, thread = self._loop, self._thread
        atexit.unregister(self.close)
        if loop is None or thread is None:
            return
        if threading.current_thread() is thread:
            raise RuntimeError("EventLoopPortal.close() cannot run on the portal's own loop")
        try:
            asyncio.run_coroutine_threadsafe(_drain_loop(), loop).result(timeout)
        except Exception:
            log.warning("sagaz: shutting down the portal's loop did not finish", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        if not thread.is_alive():
            loop.close()


class LazyPortal:
    """An `EventLoopPortal` started on first use, with an optional `SagaRuntime` started on
    its loop first; `close()` stops both, and the next use starts anew.

    For adapters whose application has no event loop of its own (Flask, Django's sync
    views): nothing starts - no thread, no connection - until the first `call()`, so
    servers that fork after loading the application start nothing in the parent.
    `runtime` makes the runtime; if it fails to start, the portal is closed again and the
    error propagates (the next call tries again). Thread-safe; `close()` also runs at
    interpreter exit.
    """

    def __init__(self, name: str, runtime: Callable[[], SagaRuntime] | None = None) -> None:
        self.name = name
        self._make_runtime = runtime
        self._lock = threading.Lock()
        self._portal: EventLoopPortal | None = None
        self._runtime: SagaRuntime | None = None

    @property
    def portal(self) -> EventLoopPortal:
        """The current portal (started, with its runtime, if needed)."""
        with self._lock:
            if self._portal is None:
                runtime = self._make_runtime() if self._make_runtime is not None else None
                portal = EventLoopPortal(self.name)
                if runtime is not None:
                    try:
                        portal.call(runtime.start)
                    except BaseException:
                        portal.close()
                        raise
                self._portal, self._runtime = portal, runtime
                atexit.register(self.close)
            return self._portal

    def call(
        self,
        function: Callable[P, Awaitable[T]],
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T:
        """`EventLoopPortal.call` on the current portal."""
        return self.portal.call(function, *args, **kwargs)

    def close(self) -> None:
        """Stop the runtime (within its grace period), then the portal's loop and thread.
        Idempotent."""
        with self._lock:
            portal, runtime = self._portal, self._runtime
            self._portal = self._runtime = None
        if portal is None:
            return
        atexit.unregister(self.close)
        try:
            if runtime is not None:
                portal.call(runtime.stop)
        finally:
            portal.close()


async def _invoke(
    function: Callable[..., Awaitable[T]], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> T:
    return await function(*args, **kwargs)


async def _drain_loop() -> None:
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    loop = asyncio.get_running_loop()
    await loop.shutdown_asyncgens()
    await loop.shutdown_default_executor()


# -- the health payload ---------------------------------------------------------------------

HEALTH_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class HealthReport:
    """What a health endpoint answers: is the database reachable, and the outbox counts.

    `status_code` is 200 when the database answered (or none is configured), else 503.
    `error` names only the exception type; the details are logged, not served.
    """

    database: Literal["ok", "unavailable", "not configured"]
    outbox: OutboxHealth | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.database != "unavailable"

    @property
    def status_code(self) -> int:
        return 200 if self.healthy else 503

    def as_dict(self) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "status": "ok" if self.healthy else "unavailable",
            "database": self.database,
        }
        if self.outbox is not None:
            payload["outbox"] = self.outbox.as_dict()
        if self.error is not None:
            payload["error"] = self.error
        return payload


async def check_health(
    engine: AsyncEngine | None, *, timeout_seconds: float = HEALTH_TIMEOUT_SECONDS
) -> HealthReport:
    """Query the outbox counts through `engine` (one read-only statement), within
    `timeout_seconds`. Never raises for a database problem: it is the report."""
    if engine is None:
        return HealthReport(database="not configured")
    try:
        async with asyncio.timeout(timeout_seconds):
            counts = await outbox_health(engine)
    except (Exception, TimeoutError) as error:
        return _unhealthy(error)
    return HealthReport(database="ok", outbox=counts)


def check_health_sync(engine: sa.Engine | None) -> HealthReport:
    """`check_health` through a sync engine (its connect timeout bounds the wait)."""
    if engine is None:
        return HealthReport(database="not configured")
    try:
        counts = outbox_health(engine)
    except Exception as error:
        return _unhealthy(error)
    return HealthReport(database="ok", outbox=counts)


def _unhealthy(error: BaseException) -> HealthReport:
    log.warning("sagaz health check: the database did not answer", exc_info=error)
    return HealthReport(database="unavailable", error=type(error).__name__)
