"""An in-memory broker for tests, demos and benchmarks (no server, no client library).

It keeps every published message (duplicates included: publishing is at-least-once) per
topic and in publish order, and can be told to fail messages - the next N, chosen ids, or
everything after the first N of a batch as if the connection dropped - so relay tests can
exercise retries, dead-lettering and per-key order without a real server.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.common import (
    BatchOutcomes,
    BrokerConnectionError,
    Outcomes,
    PublishError,
    ReceivedMessage,
    split_url_options,
)

__all__ = ["InMemoryBroker", "decode", "message_id_of"]


class InMemoryBroker:
    """Publishes into lists: `published` (all topics, in order) and `topics[topic]`.

    Failure injection (each applies to messages actually attempted, in batch order):
    `fail_next(n)` fails the next n messages, `fail_messages(*ids)` fails those ids,
    `fail_when(predicate)` fails the messages it picks, and `cut_connection_after(n)`
    makes the next batch lose its "connection" after n messages (the rest of that batch
    fails with BrokerConnectionError; the next call reconnects). A failed message blocks
    later messages with the same key in its batch, as every real broker adapter does.
    """

    def __init__(self, *, delay: float = 0.0) -> None:
        """`delay`: seconds each publish_batch call sleeps (to simulate a slow broker)."""
        self.delay = delay
        self.published: list[OutboxMessage] = []
        self.topics: defaultdict[str, list[OutboxMessage]] = defaultdict(list)
        self.batches = 0
        self.connections = 0
        self.connected = False
        self._fail_next = 0
        self._fail_next_error: BaseException | None = None
        self._fail_ids: dict[str, tuple[int | None, BaseException | None]] = {}
        self._cut_after: int | None = None
        self._fail_when: Callable[[OutboxMessage], BaseException | bool | None] | None = None
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    @classmethod
    def from_url(cls, url: str, **options: Any) -> InMemoryBroker:
        """`memory://` (options: `delay` seconds, also as `memory://?delay=0.01`)."""
        _, parsed = split_url_options(url, {"delay": float})
        return cls(**{**parsed, **options})

    # -- the Broker protocol -----------------------------------------------------------------

    async def connect(self) -> None:
        if not self.connected:
            self.connected = True
            self.connections += 1

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        await self.connect()
        self.batches += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        outcomes = BatchOutcomes(messages)
        cut_after, self._cut_after = self._cut_after, None
        for index, message in enumerate(messages):
            if cut_after is not None and index >= cut_after:
                self.connected = False
                lost = BrokerConnectionError("in-memory broker: connection cut (injected)")
                outcomes.fail_all(range(index, len(messages)), lost)
                break
            if outcomes.blocked(index):
                continue
            error = self._injected_failure(message)
            if error is not None:
                outcomes.fail(index, error)
                continue
            self.published.append(message)
            self.topics[message.topic].append(message)
        if self._waiters:
            self._wake_waiters()
        return outcomes.result()

    async def close(self) -> None:
        self.connected = False

    # -- failure injection ---------------------------------------------------------------------

    def fail_next(self, count: int = 1, error: BaseException | None = None) -> None:
        """Fail the next `count` messages attempted (with `error`, or a PublishError)."""
        self._fail_next = count
        self._fail_next_error = error

    def fail_messages(
        self, *ids: str, times: int | None = 1, error: BaseException | None = None
    ) -> None:
        """Fail each of `ids` the next `times` times it is attempted (None: every time)."""
        for message_id in ids:
            self._fail_ids[message_id] = (times, error)

    def fail_when(
        self, predicate: Callable[[OutboxMessage], BaseException | bool | None] | None
    ) -> None:
        """Fail every message for which `predicate` returns True or an exception (which is
        then the reported error), until `fail_when(None)`."""
        self._fail_when = predicate

    def cut_connection_after(self, count: int) -> None:
        """In the next batch, confirm `count` messages, then fail the rest as a lost connection."""
        self._cut_after = count

    def reset_failures(self) -> None:
        self._fail_next = 0
        self._fail_ids.clear()
        self._cut_after = None
        self._fail_when = None

    def _injected_failure(self, message: OutboxMessage) -> BaseException | None:
        if self._fail_next > 0:
            self._fail_next -= 1
            return self._fail_next_error or PublishError(
                "in-memory broker: failure injected by fail_next"
            )
        if self._fail_when is not None:
            verdict = self._fail_when(message)
            if isinstance(verdict, BaseException):
                return verdict
            if verdict:
                return PublishError(f"in-memory broker: fail_when refused {message.id}")
        if not self._fail_ids or message.id not in self._fail_ids:
            return None
        times, error = self._fail_ids[message.id]
        if times is not None:
            if times <= 1:
                del self._fail_ids[message.id]
            else:
                self._fail_ids[message.id] = (times - 1, error)
        return error or PublishError(f"in-memory broker: failure injected for {message.id}")

    # -- inspection ------------------------------------------------------------------------------

    def ids(self, topic: str | None = None) -> list[str]:
        """The ids published (to `topic`, or to any topic), in order, duplicates included."""
        source = self.published if topic is None else self.topics.get(topic, [])
        return [message.id for message in source]

    def clear(self) -> None:
        """Forget the published messages (failure settings stay)."""
        self.published.clear()
        self.topics.clear()

    async def wait_for(self, count: int, *, topic: str | None = None) -> None:
        """Wait until at least `count` messages were published (to `topic`, if given).

        Bound the wait with `asyncio.timeout(...)` around the call.
        """

        def reached() -> bool:
            if topic is None:
                return len(self.published) >= count
            return len(self.topics.get(topic, ())) >= count

        await self.wait_until(reached)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Wait until `condition()` holds; it is checked after every batch."""
        if condition():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (condition, future)
        self._waiters.append(entry)
        try:
            await future
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def _wake_waiters(self) -> None:
        for condition, future in list(self._waiters):
            if not future.done() and condition():
                future.set_result(None)


def message_id_of(delivered: OutboxMessage) -> str:
    """The outbox event id of a message the in-memory broker holds."""
    return delivered.id


def decode(delivered: OutboxMessage) -> ReceivedMessage:
    """A message the in-memory broker holds, as a ReceivedMessage."""
    return ReceivedMessage(
        id=delivered.id,
        topic=delivered.topic,
        payload=delivered.payload,
        key=delivered.key,
        headers=dict(delivered.headers),
        raw=delivered,
    )
