"""RabbitMQ consumer: manual acknowledgements on a queue bound to the relay's exchange.

The queue (named after the group unless `queue` is given; durable) is declared and bound
to the exchange for routing key `topic` (a topic-exchange pattern such as `orders.*`
works too). Every process of the group consumes the same queue; RabbitMQ hands each
message to one of them and, when a consumer's channel or connection closes (a crash, a
kill) with messages unacknowledged, delivers them again. A message is acknowledged only
after its transaction committed; a failed handler's message is requeued
(`nack(requeue=True)`) after `retry_delay` seconds; an unreadable message is rejected
without requeue (to the queue's dead-letter exchange, if it has one). At most `prefetch`
messages are delivered unacknowledged to one consumer at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz._util import parse_bool, requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.common import (
    BrokerConnectionError,
    OptionParsers,
    ReceivedMessage,
    close_within,
)
from sagaz.outbox.brokers.rabbitmq import _URL_OPTIONS as BROKER_URL_OPTIONS
from sagaz.outbox.brokers.rabbitmq import (
    DEFAULT_EXCHANGE,
    _socket_aborter,
    declare_bound_queue,
    decode,
)
from sagaz.outbox.consumers.core import BrokerConsumer, Delivery, Handler, Sessions

with requires_extra("rabbitmq", "aio-pika", "The RabbitMQ consumer"):
    import aio_pika
    from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

__all__ = ["RabbitMQConsumer"]


@dataclass(slots=True)
class _Message:
    consumer: RabbitMQConsumer
    raw: AbstractIncomingMessage

    def decode(self) -> ReceivedMessage:
        return decode(self.raw)

    async def ack(self) -> None:
        await self.raw.ack()

    async def retry(self, error: BaseException) -> None:
        await asyncio.sleep(self.consumer.retry_delay)
        await self.raw.nack(requeue=True)

    async def reject(self, error: BaseException) -> None:
        await self.raw.reject(requeue=False)


class RabbitMQConsumer(BrokerConsumer):
    """Consumes the messages the relay published to `exchange` with routing key `topic`.

    Options: `exchange` ("sagaz"), `exchange_type` ("topic"), `durable` (true),
    `queue` (default: the group), `prefetch` (100), `receive_timeout` (1 s: how long the
    loop waits for a message before checking its connection), `connect_timeout` (10 s),
    `retry_delay` (1 s before a failed message is requeued). The broker's other URL
    options are accepted and ignored.
    """

    broker = "rabbitmq"
    url_options: ClassVar[OptionParsers] = {
        "exchange": str,
        "exchange_type": str,
        "durable": parse_bool,
        "queue": str,
        "prefetch": int,
        "receive_timeout": float,
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
        exchange: str = DEFAULT_EXCHANGE,
        exchange_type: str = "topic",
        durable: bool = True,
        queue: str | None = None,
        prefetch: int = 100,
        receive_timeout: float = 1.0,
        connect_timeout: float = 10.0,
        queue_arguments: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, topic, group, handler, sessions, **options)
        if prefetch < 1 or receive_timeout <= 0:
            raise ConfigurationError("rabbitmq consumer: need prefetch >= 1, receive_timeout > 0")
        if exchange == "":
            raise ConfigurationError(
                "rabbitmq consumer: the default exchange cannot be bound; name the exchange"
            )
        self.exchange = exchange
        self.exchange_type = exchange_type
        self.durable = durable
        self.queue = queue or group
        self.prefetch = prefetch
        self.receive_timeout = receive_timeout
        self.connect_timeout = connect_timeout
        self.queue_arguments = queue_arguments
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._buffer: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()

    async def _open(self) -> None:
        self._buffer = asyncio.Queue()
        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        self._connection = connection
        async with asyncio.timeout(self.connect_timeout):
            channel = await connection.channel()
            self._channel = channel
            await channel.set_qos(prefetch_count=self.prefetch)
            queue = await declare_bound_queue(
                channel,
                self.queue,
                exchange=self.exchange,
                binding_keys=(self.topic,),
                exchange_type=self.exchange_type,
                durable=self.durable,
                arguments=self.queue_arguments,
            )
            await queue.consume(self._deliver, no_ack=False, consumer_tag=None)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._buffer.put_nowait(message)

    async def _close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None and not connection.is_closed:
            # Aborted if it does not close within connect_timeout (a hung server).
            abort = _socket_aborter(connection)
            await close_within(connection.close(), self.connect_timeout, abort)

    async def _receive(self) -> Iterable[Delivery]:
        if (
            self._connection is None
            or self._connection.is_closed
            or self._channel is None
            or self._channel.is_closed
        ):
            raise BrokerConnectionError("rabbitmq consumer: the connection or channel closed")
        try:
            first = await asyncio.wait_for(self._buffer.get(), self.receive_timeout)
        except TimeoutError:
            return []
        messages = [first]
        while not self._buffer.empty() and len(messages) < self.prefetch:
            messages.append(self._buffer.get_nowait())
        return [_Message(self, message) for message in messages]
