"""In-process wake-ups: a committed transaction that wrote saga or outbox rows wakes the
workers of this process at once instead of at their next poll.

Thread-safe: `notify` may be called from any thread (a sync request handler's commit);
each subscriber is woken on its own event loop.
"""

from __future__ import annotations

import asyncio
import threading


class WakeSignal:
    """A broadcast wake-up that asyncio tasks on any loop can wait on."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._subscribers: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        """A subscription bound to the running event loop; `close()` it when done."""
        subscription = Subscription(self, asyncio.get_running_loop())
        with self._lock:
            self._subscribers.add(subscription)
        return subscription

    def notify(self) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.wake()

    def _remove(self, subscription: Subscription) -> None:
        with self._lock:
            self._subscribers.discard(subscription)


class Subscription:
    """One waiter's view of a WakeSignal."""

    def __init__(self, signal: WakeSignal, loop: asyncio.AbstractEventLoop) -> None:
        self._signal = signal
        self._loop = loop
        self._event = asyncio.Event()

    def wake(self) -> None:
        if self._loop.is_closed():
            self._signal._remove(self)
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._event.set()
        else:
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, seconds: float | None) -> bool:
        """Wait until woken or `seconds` pass; True when woken. Resets the flag."""
        try:
            async with asyncio.timeout(seconds):
                await self._event.wait()
        except TimeoutError:
            return False
        finally:
            self._event.clear()
        return True

    def close(self) -> None:
        self._signal._remove(self)


saga_signal = WakeSignal("sagas")
"""Woken after a commit that started sagas."""
outbox_signal = WakeSignal("outbox")
"""Woken after a commit that added outbox events."""
