"""The event-loop portal: one long-lived event loop in a background thread that sync code
(threaded servers, sync views) hands coroutines to, so async connection pools stay bound
to one loop for the application's lifetime.

Why not anyio's `start_blocking_portal` (checked with anyio 4.16): it carries context
variables too, but it is a context manager whose exit waits for the loop's thread without
a bound and, on a normal exit, for the tasks still running; sagaz needs a portal that
starts lazily from any thread, cancels what is left and gives up after a timeout when the
application (or the interpreter) shuts down, and starts anew after `close()`. Those are
the ~100 lines below."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, Protocol, TypeVar

__all__ = ["EventLoopPortal", "LazyPortal", "Startable"]

log = logging.getLogger("sagaz.integrations")
T = TypeVar("T")
P = ParamSpec("P")


class Startable(Protocol):
    """What a `LazyPortal` starts on its loop first and stops last (a `SagaRuntime`)."""

    async def start(self) -> Any: ...
    async def stop(self) -> Any: ...


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

    def __init__(self, name: str, runtime: Callable[[], Startable] | None = None) -> None:
        self.name = name
        self._make_runtime = runtime
        self._lock = threading.Lock()
        self._portal: EventLoopPortal | None = None
        self._runtime: Startable | None = None

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
