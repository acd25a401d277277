"""Redis Streams consumer: a consumer group that loses no entry across consumer crashes.

`XREADGROUP ... >` delivers each entry of the stream to one consumer of the group once;
an entry that consumer never acknowledges stays in its *pending entries list* and Redis
never delivers it again by itself. This consumer therefore also

* re-reads its own pending entries (`XREADGROUP` from id 0) when it starts and every
  `claim_interval` seconds - entries it received before a restart under the same `name`,
  and entries whose handler failed (that is the retry: no `XACK`, read again later);
* claims the entries other consumers of the group left pending for longer than
  `min_idle` seconds (`XAUTOCLAIM`) - the ones of a consumer that crashed or was
  replaced under another name - and processes them;
* acknowledges (`XACK`) an entry only after its transaction committed.

`min_idle` must be longer than the handler's longest run: an entry still being processed
by a slow but live consumer is otherwise claimed and processed concurrently (the inbox
still runs the handler once, the second copy waiting for the first transaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz._util import requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.common import OptionParsers, ReceivedMessage
from sagaz.outbox.brokers.redis import _URL_OPTIONS as BROKER_URL_OPTIONS
from sagaz.outbox.brokers.redis import _text, decode, ensure_group
from sagaz.outbox.consumers.core import BrokerConsumer, Delivery, Handler, Sessions, close_quietly

with requires_extra("redis", "redis", "The Redis Streams consumer"):
    import redis.asyncio as aioredis

__all__ = ["RedisStreamsConsumer"]


@dataclass(slots=True)
class _Entry:
    consumer: RedisStreamsConsumer
    raw: tuple[str, Any]
    """(entry id, fields)"""

    @property
    def entry_id(self) -> str:
        return self.raw[0]

    def decode(self) -> ReceivedMessage:
        if not self.raw[1]:  # trimmed or deleted from the stream while pending
            raise ValueError(f"redis stream entry {self.entry_id}: no fields (deleted?)")
        return decode(self.raw, stream=self.consumer.stream)

    async def ack(self) -> None:
        await self.consumer.xack(self.entry_id)

    async def retry(self, error: BaseException) -> None:
        """Left pending: the next scan of the consumer's own pending entries reads it."""

    async def reject(self, error: BaseException) -> None:
        await self.consumer.xack(self.entry_id)


class RedisStreamsConsumer(BrokerConsumer):
    """Consumes stream `stream_prefix + topic` as consumer group `group` (created at the
    stream's start, id 0, if missing), as consumer `name` of the group.

    Options: `min_idle` (30 s; see the module docstring), `claim_interval` (5 s: how often
    own pending entries are re-read and idle ones claimed - also the retry delay of a
    failed entry), `batch_size` (100 entries per read), `block` (1 s: how long one read
    waits for new entries), `stream_prefix` (as the broker's), `socket_timeout`,
    `connect_timeout`. The broker's `maxlen` URL option is accepted and ignored, so the
    relay's URL can be reused.
    """

    broker = "redis"
    url_options: ClassVar[OptionParsers] = {
        "min_idle": float,
        "claim_interval": float,
        "batch_size": int,
        "block": float,
        "stream_prefix": str,
        "socket_timeout": float,
        "connect_timeout": float,
    }
    broker_url_options = BROKER_URL_OPTIONS

    def __init__(
        self,
        url: str,
        topic: str,
        group: str,
        handler: Handler,
        sessions: Sessions,
        *,
        min_idle: float = 30.0,
        claim_interval: float = 5.0,
        batch_size: int = 100,
        block: float = 1.0,
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        stream_prefix: str = "",
        **options: Any,
    ) -> None:
        super().__init__(url, topic, group, handler, sessions, **options)
        self.stream = stream_prefix + topic
        if min_idle < 0 or claim_interval <= 0 or block <= 0 or batch_size < 1:
            raise ConfigurationError(
                "redis consumer: need min_idle >= 0, claim_interval > 0, block > 0, batch_size >= 1"
            )
        self.min_idle = min_idle
        self.claim_interval = claim_interval
        self.batch_size = batch_size
        self.block = block
        self.socket_timeout = max(socket_timeout, block + 5.0)
        self.connect_timeout = connect_timeout
        self._client: aioredis.Redis | None = None
        self._next_scan = 0.0
        self._pending_from = "0"
        self._claim_from = "0-0"

    async def _open(self) -> None:
        client = aioredis.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.connect_timeout,
        )
        self._client = client
        await client.ping()
        await ensure_group(client, self.stream, self.group)
        self._next_scan = 0.0  # own pending entries first, then idle ones of others
        self._pending_from, self._claim_from = "0", "0-0"

    async def _close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await close_quietly(client.aclose())

    async def xack(self, entry_id: str) -> None:
        assert self._client is not None
        await self._client.xack(self.stream, self.group, entry_id)

    async def _receive(self) -> Iterable[Delivery]:
        assert self._client is not None
        loop = asyncio.get_running_loop()
        if loop.time() >= self._next_scan:
            entries = await self._scan()
            if entries:
                return entries
            self._next_scan = loop.time() + self.claim_interval
        response: Any = await self._client.xreadgroup(
            self.group,
            self.name,
            {self.stream: ">"},
            count=self.batch_size,
            block=int(self.block * 1000),
        )
        return self._entries(response)

    async def _scan(self) -> list[_Entry]:
        """The next page of own pending entries, else of idle entries claimed from others
        (empty once both are exhausted; they restart from the beginning next time)."""
        assert self._client is not None
        if self._pending_from:
            response: Any = await self._client.xreadgroup(
                self.group, self.name, {self.stream: self._pending_from}, count=self.batch_size
            )
            entries = self._entries(response)
            if len(entries) < self.batch_size:
                self._pending_from = ""
            else:
                self._pending_from = entries[-1].entry_id
            if entries:
                return entries
        if self._claim_from:
            claimed: Any = await self._client.xautoclaim(
                self.stream,
                self.group,
                self.name,
                min_idle_time=int(self.min_idle * 1000),
                start_id=self._claim_from,
                count=self.batch_size,
            )
            cursor = _text(claimed[0]) or "0-0"
            self._claim_from = "" if cursor == "0-0" else cursor
            entries = [_Entry(self, (_text(i) or "", f)) for i, f in claimed[1] if i is not None]
            if entries:
                return entries
        self._pending_from, self._claim_from = "0", "0-0"
        return []

    def _entries(self, response: Any) -> list[_Entry]:
        return [
            _Entry(self, (_text(entry_id) or "", fields))
            for _stream, entries in response or []
            for entry_id, fields in entries
            if entry_id is not None
        ]
