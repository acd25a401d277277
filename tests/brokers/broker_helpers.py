"""Helpers of the broker tests: a TCP proxy that can cut or stall connections, servers
that are not brokers, leak checks, message factories, and order checks."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import uuid
import warnings
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Literal

import pytest

from sagaz.outbox.brokers import BrokerConnectionError, EarlierMessageFailedError, OutboxMessage


class TcpProxy:
    """A TCP proxy on 127.0.0.1 in front of a server, for cutting connections in tests.

    `drop()` aborts every connection and refuses new ones until `restore()`;
    `drop_after(n)` does the same once n more bytes went from clients to the server
    (forwarding exactly n), to cut a connection in the middle of a batch. `stall()` keeps
    the connections open but stops forwarding (and reading) in both directions, like a
    server that hangs or a network that black-holes packets, until `resume()`.
    """

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.accepting = True
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._budget: int | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[object]] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def drop(self) -> None:
        self.accepting = False
        self._budget = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self.accepting = True

    def drop_after(self, nbytes: int) -> None:
        self._budget = nbytes

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    async def close(self) -> None:
        self.resume()
        self.drop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._handlers, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        if not self.accepting:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, upstream_writer))
        pumps = [
            asyncio.ensure_future(self._pump(reader, upstream_writer, upstream=True)),
            asyncio.ensure_future(self._pump(upstream_reader, writer, upstream=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for one in (writer, upstream_writer):
                one.transport.abort()
                self._writers.discard(one)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await self._flowing.wait()
                data = await reader.read(65536)
                if not data:
                    break
                await self._flowing.wait()
                if upstream and self._budget is not None:
                    if len(data) >= self._budget:
                        writer.write(data[: self._budget])
                        with contextlib.suppress(OSError):
                            await writer.drain()
                        self.drop()
                        return
                    self._budget -= len(data)
                writer.write(data)
                await writer.drain()


KEYS = ("order-1", "order-2", "order-3", None)


def make_messages(
    topic: str | Sequence[str], count: int, *, keys: Sequence[str | None] = KEYS, start: int = 0
) -> list[OutboxMessage]:
    """`count` messages spread over `keys` (None: no key) and topics, each with a
    correlation id, a custom header, a saga id on some, and a non-ASCII JSON payload."""
    topics = [topic] if isinstance(topic, str) else list(topic)
    created = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    return [
        OutboxMessage(
            id=str(uuid.uuid4()),
            topic=topics[n % len(topics)],
            payload={"n": n, "text": "zażółć ✓", "items": [1, 2.5, None, True]},
            key=keys[n % len(keys)],
            headers={"correlation-id": f"corr-{n}", "x-tenant": "acme"},
            created_at=created,
            saga_id=str(uuid.uuid4()) if n % 5 == 0 else None,
        )
        for n in range(start, start + count)
    ]


def assert_prefix_per_key(
    messages: Sequence[OutboxMessage], outcomes: Sequence[BaseException | None]
) -> None:
    """Per key, the confirmed messages are a prefix: nothing confirmed after a failure."""
    assert len(outcomes) == len(messages)
    failed: set[str] = set()
    for message, outcome in zip(messages, outcomes, strict=True):
        if message.key is None:
            continue
        if outcome is not None:
            failed.add(message.key)
        else:
            assert message.key not in failed, f"{message.id} confirmed after its key failed"


def assert_first_arrivals_in_key_order(
    sent: Iterable[OutboxMessage], received_ids: Sequence[str]
) -> None:
    """Every sent message arrived, and per key the first arrivals follow the send order."""
    sent = list(sent)
    first_position: dict[str, int] = {}
    for position, message_id in enumerate(received_ids):
        first_position.setdefault(message_id, position)
    missing = [m.id for m in sent if m.id not in first_position]
    assert not missing, f"{len(missing)} of {len(sent)} messages never arrived"
    by_key: dict[str, list[int]] = {}
    for message in sent:
        if message.key is not None:
            by_key.setdefault(message.key, []).append(first_position[message.id])
    for key, positions in by_key.items():
        assert positions == sorted(positions), f"key {key!r} arrived out of order"


def assert_each_arrived_once_in_key_order(
    sent: Iterable[OutboxMessage], received_ids: Sequence[str]
) -> None:
    """Every sent message arrived exactly once, each key's in send order (the order across
    keys, and of messages without a key, is not promised)."""
    sent = list(sent)
    assert sorted(received_ids) == sorted(m.id for m in sent), "not each message exactly once"
    assert_first_arrivals_in_key_order(sent, received_ids)


def assert_connection_failed(outcomes: Sequence[BaseException | None]) -> None:
    """No message of the batch was confirmed because of the connection: each one is
    unconfirmed (BrokerConnectionError) or was held back, unsent, behind such a failure
    of its key (EarlierMessageFailedError)."""
    assert any(isinstance(outcome, BrokerConnectionError) for outcome in outcomes), outcomes
    for outcome in outcomes:
        assert isinstance(outcome, BrokerConnectionError | EarlierMessageFailedError), outcome


async def retry_failed(
    publish: Callable[[Sequence[OutboxMessage]], Awaitable[Sequence[BaseException | None]]],
    messages: Sequence[OutboxMessage],
    outcomes: Sequence[BaseException | None],
    *,
    attempts: int = 20,
) -> None:
    """Publish the failed messages again (in order) until all are confirmed, as the relay
    would - polling, not sleeping, between attempts that fail."""
    pending = [m for m, outcome in zip(messages, outcomes, strict=True) if outcome is not None]
    for _ in range(attempts):
        if not pending:
            return
        results = await publish(pending)
        pending = [m for m, outcome in zip(pending, results, strict=True) if outcome is not None]
        if pending:
            await asyncio.sleep(0.05)
    raise AssertionError(f"{len(pending)} messages still unconfirmed after {attempts} attempts")


def sockets_to(port: int) -> int:
    """How many TCP sockets this process holds open to 127.0.0.1:`port` (Linux /proc):
    a socket a broker failed to close is still counted, whatever the garbage collector
    does later (an asyncio transport still registered with the loop is never collected)."""
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("counting open sockets needs Linux /proc")
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            link = os.readlink(f"/proc/self/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[len("socket:[") : -1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as rows:
            next(rows)
            for row in rows:
                fields = row.split()
                remote_port = int(fields[2].rsplit(":", 1)[1], 16)
                if remote_port == port and fields[9] in inodes:
                    count += 1
    return count


def assert_nothing_leaked() -> None:
    """Collect garbage and fail on any ResourceWarning it raises: a socket, transport or
    event-loop object dropped without being closed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, f"unclosed resources: {leaks}"


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on (it was free a moment ago)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


NotABrokerMode = Literal["close", "garbage", "silent"]


class NotABroker:
    """A TCP server on 127.0.0.1 that accepts connections but speaks no broker protocol:
    `close` hangs up at once, `garbage` answers an HTTP error, `silent` never answers."""

    def __init__(self, mode: NotABrokerMode) -> None:
        self.mode = mode
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> NotABroker:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self.mode == "close":
            writer.transport.abort()
        elif self.mode == "garbage":
            writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")


def big_messages(topic: str, count: int, size: int) -> list[OutboxMessage]:
    """`count` messages of about `size` bytes each, to fill a stalled connection's buffers."""
    return [
        OutboxMessage(id=str(uuid.uuid4()), topic=topic, payload="x" * size, key=f"big-{n % 3}")
        for n in range(count)
    ]
