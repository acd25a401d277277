"""The threads plain `def` steps and compensations run in.

A pool of sagaz's own, not the event loop's default executor: `asyncio.run` waits for
the default executor's threads when it ends, so one step blocked in a thread would keep
a stopping worker alive for ever. `in_flight()` counts the calls running, so a stopping
process can tell that leaving now abandons one (`sagaz worker` leaves anyway once its
shutdown grace is over: the saga's lease expires and another worker resumes it).
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

__all__ = ["in_flight", "run_in_thread"]

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_in_flight = 0


def run_in_thread(call: Callable[[], Any]) -> asyncio.Future[Any]:
    """Run `call` in a step thread; the future of its result, on the running loop."""
    global _pool
    with _lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(thread_name_prefix="sagaz-step")
        pool = _pool
    return asyncio.get_running_loop().run_in_executor(pool, _counted, call)


def in_flight() -> int:
    """How many step calls are running in threads right now."""
    return _in_flight


def _counted(call: Callable[[], Any]) -> Any:
    global _in_flight
    with _lock:
        _in_flight += 1
    try:
        return call()
    finally:
        with _lock:
            _in_flight -= 1


def _forget_after_fork() -> None:
    """A forked child has none of the parent's threads: start afresh."""
    global _lock, _pool, _in_flight
    _lock, _pool, _in_flight = threading.Lock(), None, 0


os.register_at_fork(after_in_child=_forget_after_fork)
