"""Kafka through aiokafka's idempotent producer (`enable_idempotence=True`, `acks="all"`).

Each outbox event becomes one record on topic = topic, with record key = the event's key
(so events with the same key land on the same partition, in order), value = JSON payload,
and headers = the event's headers (the correlation id among them) plus `sagaz-message-id`
(the outbox event id), `sagaz-key` and `sagaz-saga-id`. The idempotent producer keeps
its own retries free of duplicates and of reordering within a partition; a retry by the
relay after an unconfirmed send can still duplicate a record, which its id identifies.
A record with a key is sent only once the previous one of its key was acknowledged
(`BatchOutcomes.pipeline`): a failed delivery is never overtaken by a later record of its
key in a later request, or on another topic.

Kafka has no server on the development machine: the adapter is tested against a real
broker only when `SAGAZ_TEST_KAFKA=host:port` is set (see docs/brokers.md).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from sagaz._util import requires_extra
from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, OutboxMessage
from sagaz.outbox.brokers.common import (
    KEY_HEADER,
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

with requires_extra("kafka", "aiokafka", "The Kafka broker"):
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError, KafkaTimeoutError

__all__ = ["KafkaBroker", "decode", "message_id_of"]

_URL_OPTIONS: OptionParsers = {
    "client_id": str,
    "linger_ms": int,
    "request_timeout_ms": int,
    "compression_type": str,
    "max_batch_size": int,
}


class KafkaBroker:
    """Publishes outbox events to Kafka with an idempotent producer.

    `bootstrap_servers`: "host:port[,host:port...]". `linger_ms`, `request_timeout_ms`,
    `compression_type`, `max_batch_size`, `client_id` are aiokafka's; `producer_options`
    go to `AIOKafkaProducer` as they are (except that idempotence stays on). After a
    failed batch the producer is closed and the next batch starts a fresh one.
    """

    def __init__(
        self,
        bootstrap_servers: str = "127.0.0.1:9092",
        *,
        client_id: str = "sagaz-outbox",
        linger_ms: int = 5,
        request_timeout_ms: int = 30_000,
        compression_type: str | None = None,
        max_batch_size: int = 1_048_576,
        producer_options: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.options: dict[str, Any] = {
            "client_id": client_id,
            "linger_ms": linger_ms,
            "request_timeout_ms": request_timeout_ms,
            "compression_type": compression_type,
            "max_batch_size": max_batch_size,
            **(producer_options or {}),
            "enable_idempotence": True,
            "acks": "all",
        }
        self._producer: Any = None
        self._connect_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> KafkaBroker:
        """`kafka://host:9092[,host2:9092]`; options also as query parameters
        (`?client_id=orders&linger_ms=10`)."""
        base, parsed = split_url_options(url, _URL_OPTIONS)
        servers = base.split("://", 1)[-1].partition("?")[0].rstrip("/")
        return cls(servers, **{**parsed, **options})

    @property
    def connected(self) -> bool:
        return self._producer is not None

    async def connect(self) -> None:
        """Start the idempotent producer. Idempotent.

        Raises BrokerConnectionError naming the bootstrap servers and the cause when no
        server answers; the producer of the attempt is stopped again first.
        """
        async with self._connect_lock:
            if self._producer is not None:
                return
            producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, **self.options)
            try:
                await producer.start()
            except BaseException as error:
                with contextlib.suppress(Exception):
                    await producer.stop()
                if isinstance(error, Exception):
                    raise connect_error("kafka", self.bootstrap_servers, error) from error
                raise
            self._producer = producer

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        outcomes = BatchOutcomes(messages)
        if not messages:
            return outcomes.result()
        if not await outcomes.connected("kafka", self.connect):
            return outcomes.result()
        producer = self._producer
        assert producer is not None
        # A topic whose metadata could not be fetched fails the rest of its messages at
        # once instead of waiting request_timeout_ms for each.
        unavailable: dict[str, PublishError] = {}

        async def send(index: int) -> asyncio.Future[None] | None:
            message = messages[index]
            if message.topic in unavailable:
                outcomes.fail(index, unavailable[message.topic])
                return None
            try:
                headers = [(name, value.encode()) for name, value in wire_headers(message).items()]
                delivery = await producer.send(
                    message.topic,
                    value=encode_payload(message.payload),
                    key=None if message.key is None else message.key.encode(),
                    headers=headers,
                )
            except KafkaTimeoutError as error:
                unavailable[message.topic] = BrokerConnectionError(
                    f"kafka: no metadata for topic {message.topic!r}: {error!r}"
                )
                outcomes.fail(index, unavailable[message.topic])
                return None
            except KafkaError as error:
                # Raised before the record was queued (too large, bad topic name, ...).
                outcomes.fail(index, PublishError(f"kafka: cannot send {message.id}: {error!r}"))
                return None
            except Exception as error:  # a message that cannot be encoded
                outcomes.fail(index, PublishError(f"kafka: cannot encode {message.id}: {error}"))
                return None
            return asyncio.ensure_future(_acknowledged(delivery))

        # No deadline of its own: aiokafka's request_timeout_ms bounds each delivery.
        await outcomes.pipeline(
            send,
            deadline=None,
            timed_out=BrokerConnectionError("kafka: not acknowledged in time"),
            cancelled=BrokerConnectionError("kafka: not acknowledged: cancelled"),
        )
        errors = outcomes.result()
        if any(error is not None for error in errors):
            await self._drop()
        return errors

    async def close(self) -> None:
        """Stop the producer (aiokafka flushes what is still queued first). Idempotent;
        never raises."""
        await self._drop()

    async def _drop(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()


async def _acknowledged(delivery: asyncio.Future[Any]) -> None:
    """Wait for a record's delivery; any failure (a delivery cancelled from inside
    aiokafka too) is raised as BrokerConnectionError."""
    try:
        await delivery
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
        raise BrokerConnectionError("kafka: not acknowledged: cancelled") from None
    except Exception as error:
        raise BrokerConnectionError(f"kafka: not acknowledged: {error!r}") from None


# -- consumer side ---------------------------------------------------------------------------


def _headers_of(record: Any) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in record.headers or ():
        if isinstance(value, bytes):
            try:
                headers[name] = value.decode()
            except UnicodeDecodeError:
                continue
        elif value is not None:
            headers[name] = str(value)
    return headers


def _where(record: Any) -> str:
    return f"kafka record {record.topic}[{record.partition}]@{record.offset}"


def message_id_of(delivered: Any) -> str:
    """The outbox event id of an aiokafka `ConsumerRecord` (its `sagaz-message-id` header).

    Raises MalformedMessageError naming the record when the header is missing.
    """
    value = _headers_of(delivered).get(MESSAGE_ID_HEADER)
    return require_id(value, _where(delivered), f"the {MESSAGE_ID_HEADER} header")


def decode(delivered: Any) -> ReceivedMessage:
    """An aiokafka `ConsumerRecord` (value not deserialised) as a ReceivedMessage."""
    message_id = message_id_of(delivered)
    headers = _headers_of(delivered)
    where = f"{_where(delivered)} id {message_id}"
    if not isinstance(delivered.value, bytes | str):
        raise MalformedMessageError(f"{where}: the value is not bytes (a deserializer is set?)")
    key = delivered.key.decode() if isinstance(delivered.key, bytes) else delivered.key
    return ReceivedMessage(
        id=message_id,
        topic=delivered.topic,
        payload=decode_payload(delivered.value, where),
        key=key if key is not None else headers.get(KEY_HEADER),
        headers=headers,
        raw=delivered,
    )
