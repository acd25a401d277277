"""Redis Streams: each outbox event becomes one stream entry (XADD), stream = topic.

Entry fields: `id` (the outbox event id - Redis generates the entry id itself, so this is
what consumers deduplicate on), `key` (when the event has one), `payload` (JSON) and
`headers` (a JSON object: the event's headers, the correlation id among them, plus
`sagaz-message-id`/`sagaz-key`/`sagaz-saga-id`). A batch is sent as pipelines on one
connection (`BatchOutcomes.waves`): the first holds the first message of each key and those
without one, each next one the followers of what the previous one stored. Redis applies a
pipeline's commands in order but fails each on its own (WRONGTYPE, OOM, ...): a message is
sent only once the previous one of its key was stored, so a failed XADD is never overtaken
by a later entry of its key.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sagaz._util import describe, requires_extra
from sagaz.outbox.brokers.base import OutboxMessage
from sagaz.outbox.brokers.common import (
    BatchOutcomes,
    BrokerConnectionError,
    MalformedMessageError,
    OptionParsers,
    Outcomes,
    PublishError,
    ReceivedMessage,
    connect_error,
    decode_payload,
    encode_payload,
    require_id,
    split_url_options,
    wire_headers,
)

with requires_extra("redis", "redis", "The Redis Streams broker"):
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff
    from redis.exceptions import ResponseError

__all__ = [
    "RedisStreamsBroker",
    "decode",
    "ensure_group",
    "message_id_of",
    "read_group",
    "read_stream",
]

#: Stream entry fields as redis-py returns them (bytes, or str with decode_responses).
Fields = Mapping[Any, Any]

_URL_OPTIONS: OptionParsers = {
    "maxlen": int,
    "stream_prefix": str,
    "socket_timeout": float,
    "connect_timeout": float,
}


class RedisStreamsBroker:
    """Publishes outbox events to Redis Streams, pipelined: one round trip per batch, plus
    one per further message of the longest same-key run in it.

    `maxlen` trims each stream to about that many entries (`XADD MAXLEN ~`); None keeps
    everything (trim it yourself). `stream_prefix` is prepended to every topic. The
    client does not retry on its own: a lost connection fails the unconfirmed messages
    and the next batch reconnects. Pass `client` to publish through an existing
    `redis.asyncio.Redis` (it is then not closed by `close`).
    """

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        maxlen: int | None = None,
        stream_prefix: str = "",
        socket_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        client: aioredis.Redis | None = None,
    ) -> None:
        self.url = url
        self.maxlen = maxlen
        self.stream_prefix = stream_prefix
        self.socket_timeout = socket_timeout
        self.connect_timeout = connect_timeout
        self._client = client
        self._owns_client = client is None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStreamsBroker:
        """`redis://[:password@]host:port/db` or `rediss://...`; options also as query
        parameters (`?maxlen=100000&stream_prefix=app.`), other parameters go to redis-py."""
        client_url, parsed = split_url_options(url, _URL_OPTIONS)
        return cls(client_url, **{**parsed, **options})

    def stream_of(self, topic: str) -> str:
        return self.stream_prefix + topic

    async def connect(self) -> None:
        """Connect and PING. Idempotent.

        Raises BrokerConnectionError naming the URL (password hidden) and the cause when
        the server cannot be reached; a client the broker created for the attempt is
        closed again (a client passed in is left open).
        """
        created = self._client is None
        if self._client is None:
            self._client = aioredis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.connect_timeout,
                retry=Retry(NoBackoff(), 0),
            )
            _abort_on_disconnect(self._client.connection_pool)
        client = self._client
        try:
            await client.ping()
        except Exception as error:
            if created and self._client is client:
                self._client = None
                with contextlib.suppress(Exception):
                    await client.aclose()
            raise connect_error("redis", self.url, error, self.connect_timeout) from error

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        outcomes = BatchOutcomes(messages)
        if not messages:
            return outcomes.result()
        if self._client is None and not await outcomes.connected(
            "redis", self.connect, self._drop_connections
        ):
            return outcomes.result()
        assert self._client is not None
        for wave in outcomes.waves():
            if not await self._send_wave(self._client, outcomes, wave):
                break
        return outcomes.result()

    async def _send_wave(
        self, client: aioredis.Redis, outcomes: BatchOutcomes, wave: Sequence[int]
    ) -> bool:
        """XADD the messages `wave` in one pipeline and record their failures; False when
        the connection failed (nothing more is sent)."""
        messages = outcomes.messages
        pipeline = client.pipeline(transaction=False)
        sent: list[int] = []
        for index in wave:
            try:
                fields = _fields(messages[index])
            except Exception as error:  # a message that cannot be encoded
                outcomes.fail(
                    index, PublishError(f"redis: cannot encode {messages[index].id}: {error}")
                )
                continue
            pipeline.xadd(self.stream_of(messages[index].topic), fields, maxlen=self.maxlen)
            sent.append(index)
        if not sent:
            return True
        try:
            results = await pipeline.execute(raise_on_error=False)
        except Exception as error:
            # Some commands may have run before the connection broke: report them all
            # unconfirmed; a retry may duplicate an entry, which its `id` field identifies.
            await self._drop_connections()
            lost = BrokerConnectionError(f"redis: pipeline failed: {describe(error)}")
            outcomes.fail_all(sent, lost)
            outcomes.stop(lost)
            return False
        for index, result in zip(sent, results, strict=True):
            if isinstance(result, BaseException):
                stream = self.stream_of(messages[index].topic)
                outcomes.fail(
                    index, PublishError(f"redis: XADD to stream {stream!r}: {describe(result)}")
                )
        return True

    async def close(self) -> None:
        """Close the client the broker created (not one passed in). Idempotent; never
        raises; sockets that cannot be closed gracefully (a server that stopped reading)
        are aborted."""
        if self._owns_client:
            client, self._client = self._client, None
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.aclose()

    async def _drop_connections(self) -> None:
        """Disconnect every pooled connection so the next batch starts on a fresh one."""
        if self._client is None:
            return
        with contextlib.suppress(Exception):  # they are being dropped anyway
            await self._client.connection_pool.disconnect()


# redis-py disconnects a connection that failed (a write that timed out, a lost reply)
# with a plain close, which on a socket whose peer stopped reading waits for the send
# buffer to drain: the socket stays open until the server reads again or the kernel
# gives up (minutes, or never for a hung server). These connection classes abort the
# socket once redis-py's own disconnect is done, whatever its outcome (a no-op when the
# close already went through).


async def _disconnect_then_abort(
    writer: asyncio.StreamWriter | None, disconnect: Callable[[], Awaitable[None]]
) -> None:
    try:
        await disconnect()
    finally:
        if writer is not None:
            writer.transport.abort()


class _AbortingConnection(aioredis.Connection):
    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        await _disconnect_then_abort(
            self._writer, lambda: super(_AbortingConnection, self).disconnect(*args, **kwargs)
        )


class _AbortingSSLConnection(aioredis.SSLConnection):
    async def disconnect(self, *args: Any, **kwargs: Any) -> None:
        await _disconnect_then_abort(
            self._writer,
            lambda: super(_AbortingSSLConnection, self).disconnect(*args, **kwargs),
        )


def _abort_on_disconnect(pool: aioredis.ConnectionPool) -> None:
    """Make the (still empty) pool open connections that abort their socket when dropped."""
    if pool.connection_class is aioredis.SSLConnection:
        pool.connection_class = _AbortingSSLConnection
    elif pool.connection_class is aioredis.Connection:
        pool.connection_class = _AbortingConnection


def _fields(message: OutboxMessage) -> dict[Any, Any]:
    fields: dict[Any, Any] = {
        "id": message.id,
        "payload": encode_payload(message.payload),
        "headers": json.dumps(wire_headers(message), separators=(",", ":"), ensure_ascii=False),
    }
    if message.key is not None:
        fields["key"] = message.key
    return fields


# -- consumer side ---------------------------------------------------------------------------


def _text(value: bytes | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.decode()


def _field(fields: Fields, name: str) -> str | None:
    value = fields.get(name)
    if value is None:
        value = fields.get(name.encode())
    return _text(value)


def _entry_fields(delivered: Fields | tuple[Any, Fields]) -> Fields:
    if isinstance(delivered, tuple):
        return delivered[1]
    return delivered


def message_id_of(delivered: Fields | tuple[Any, Fields]) -> str:
    """The outbox event id of a stream entry: its fields, or an (entry id, fields) pair.

    Raises MalformedMessageError when the entry has no `id` field.
    """
    fields = _entry_fields(delivered)
    return require_id(_field(fields, "id"), "redis stream entry", "the 'id' field")


def decode(delivered: Fields | tuple[Any, Fields], *, stream: str = "") -> ReceivedMessage:
    """A stream entry (fields, or an (entry id, fields) pair) as a ReceivedMessage.

    `topic` is `stream` (Redis does not repeat the stream name in an entry). Raises
    MalformedMessageError naming the field that is missing or not JSON.
    """
    fields = _entry_fields(delivered)
    where = f"redis stream {stream!r} entry" if stream else "redis stream entry"
    message_id = require_id(_field(fields, "id"), where, "the 'id' field")
    where = f"{where} {message_id}"
    payload_text = _field(fields, "payload")
    if payload_text is None:
        raise MalformedMessageError(f"{where}: no 'payload' field")
    headers = decode_payload(_field(fields, "headers") or "{}", f"{where} (headers)")
    if not isinstance(headers, dict):
        raise MalformedMessageError(f"{where}: 'headers' is not a JSON object")
    return ReceivedMessage(
        id=message_id,
        topic=stream,
        payload=decode_payload(payload_text, where),
        key=_field(fields, "key"),
        headers={str(name): str(value) for name, value in headers.items()},
        raw=delivered,
    )


async def read_stream(
    client: aioredis.Redis, stream: str, *, after: str = "-", count: int | None = None
) -> list[ReceivedMessage]:
    """Entries of `stream` after entry id `after` (exclusive; "-" = from the start), oldest
    first, decoded. `raw` is the (entry id, fields) pair."""
    start = after if after == "-" else f"({after}"
    entries: Any = await client.xrange(stream, min=start, max="+", count=count)
    return [decode((_text(entry_id), fields), stream=stream) for entry_id, fields in entries]


async def ensure_group(
    client: aioredis.Redis, stream: str, group: str, *, start: str = "0"
) -> None:
    """Create consumer group `group` on `stream` (and the stream) unless it exists."""
    try:
        await client.xgroup_create(stream, group, id=start, mkstream=True)
    except ResponseError as error:
        if "BUSYGROUP" not in str(error):
            raise


async def read_group(
    client: aioredis.Redis,
    stream: str,
    group: str,
    consumer: str,
    *,
    count: int = 100,
    block_ms: int | None = None,
) -> list[ReceivedMessage]:
    """New entries for `consumer` of consumer group `group` (XREADGROUP ... >), decoded.

    Acknowledge each once processed: `await client.xack(stream, group, m.raw[0])`. An
    entry that is never acknowledged stays pending and is *not* returned by `>` again:
    it must be re-read (id 0) or claimed (XAUTOCLAIM) - which
    `sagaz.outbox.consumers.redis.RedisStreamsConsumer` does, with the inbox, for
    exactly-once processing.
    """
    response: Any = await client.xreadgroup(
        group, consumer, {stream: ">"}, count=count, block=block_ms
    )
    messages: list[ReceivedMessage] = []
    for _stream, entries in response or []:
        for entry_id, fields in entries:
            messages.append(decode((_text(entry_id), fields), stream=stream))
    return messages
