"""RabbitMQ (AMQP 0-9-1 through aio-pika) with publisher confirms.

Each outbox event is published to one exchange (by default the durable topic exchange
"sagaz") with routing key = topic, as a persistent message whose AMQP `message_id` is the
outbox event id and whose `correlation_id` property and `correlation-id` header carry the
correlation id. A batch is written on one channel without waiting between keys (a
message of a key only once the previous one of that key was confirmed:
`BatchOutcomes.pipeline`); the broker confirms each (ack/nack), and each message's outcome
is its own confirmation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sagaz._util import describe, parse_bool, requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, OutboxMessage
from sagaz.outbox.brokers.common import (
    CORRELATION_HEADER,
    KEY_HEADER,
    BatchOutcomes,
    BrokerConnectionError,
    OptionParsers,
    Outcomes,
    PublishError,
    ReceivedMessage,
    close_within,
    connect_error,
    decode_payload,
    encode_payload,
    require_id,
    split_url_options,
    wire_headers,
)

with requires_extra("rabbitmq", "aio-pika", "The RabbitMQ broker"):
    import aio_pika
    import aiormq
    from aio_pika.abc import (
        AbstractChannel,
        AbstractConnection,
        AbstractExchange,
        AbstractIncomingMessage,
        AbstractQueue,
    )

__all__ = ["RabbitMQBroker", "declare_bound_queue", "decode", "message_id_of"]

DEFAULT_EXCHANGE = "sagaz"

_URL_OPTIONS: OptionParsers = {
    "exchange": str,
    "exchange_type": str,
    "durable": parse_bool,
    "declare_exchange": parse_bool,
    "mandatory": parse_bool,
    "confirm_timeout": float,
    "connect_timeout": float,
}

#: Errors that mean the connection or channel is gone (the next batch reconnects).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
    TimeoutError,
    RuntimeError,
)


class RabbitMQBroker:
    """Publishes outbox events to a RabbitMQ exchange with publisher confirms.

    Options: `exchange` (name; "" is the default exchange, where the routing key names a
    queue), `exchange_type` ("topic", "direct", "fanout", "headers"), `durable`,
    `declare_exchange` (declare it on connect; False expects it to exist), `mandatory`
    (report messages no queue is bound for as failed instead of letting RabbitMQ drop
    them - they are then retried and eventually dead-lettered), `confirm_timeout` and
    `connect_timeout` in seconds.
    """

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        exchange: str = DEFAULT_EXCHANGE,
        exchange_type: str = "topic",
        durable: bool = True,
        declare_exchange: bool = True,
        mandatory: bool = False,
        confirm_timeout: float = 30.0,
        connect_timeout: float = 10.0,
    ) -> None:
        try:
            self.exchange_type = aio_pika.ExchangeType(exchange_type)
        except ValueError:
            kinds = ", ".join(kind.value for kind in aio_pika.ExchangeType)
            raise ConfigurationError(
                f"RabbitMQ exchange_type {exchange_type!r} is not one of {kinds}"
            ) from None
        self.url = url
        self.exchange_name = exchange
        self.durable = durable
        self.declare_exchange = declare_exchange
        self.mandatory = mandatory
        self.confirm_timeout = confirm_timeout
        self.connect_timeout = connect_timeout
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._connect_lock = asyncio.Lock()

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RabbitMQBroker:
        """`amqp://user:password@host:port/vhost` or `amqps://...`; options also as query
        parameters (`?exchange=orders&mandatory=true`), others go to aio-pika."""
        client_url, parsed = split_url_options(url, _URL_OPTIONS)
        return cls(client_url, **{**parsed, **options})

    @property
    def connected(self) -> bool:
        return (
            self._exchange is not None
            and self._channel is not None
            and not self._channel.is_closed
            and self._connection is not None
            and not self._connection.is_closed
        )

    async def connect(self) -> None:
        """Connect, open a confirming channel and declare (or check) the exchange.
        Idempotent.

        Raises BrokerConnectionError naming the URL (password hidden) and the cause when
        that fails; a connection the attempt opened is closed again first.
        """
        async with self._connect_lock:
            if not self.connected:
                await self._drop()
                try:
                    await self._open()
                except Exception as error:
                    raise connect_error(
                        "rabbitmq", self.url, error, self.connect_timeout
                    ) from error

    async def _open(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            async with asyncio.timeout(self.connect_timeout):
                channel = await connection.channel(
                    publisher_confirms=True, on_return_raises=self.mandatory
                )
                if self.exchange_name == "":
                    exchange = channel.default_exchange
                elif self.declare_exchange:
                    exchange = await channel.declare_exchange(
                        self.exchange_name,
                        self.exchange_type,
                        durable=self.durable,
                        timeout=self.connect_timeout,
                    )
                else:
                    exchange = await channel.get_exchange(self.exchange_name, ensure=True)
        except BaseException:
            await self._close_connection(connection)
            raise
        self._connection, self._channel, self._exchange = connection, channel, exchange

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        outcomes = BatchOutcomes(messages)
        if not messages:
            return outcomes.result()
        if not await outcomes.connected("rabbitmq", self.connect, self._drop):
            return outcomes.result()
        exchange = self._exchange
        assert exchange is not None
        loop = asyncio.get_running_loop()

        async def send(index: int) -> asyncio.Future[None] | None:
            message = messages[index]
            try:
                amqp_message = _amqp_message(message)
            except Exception as error:  # a message that cannot be encoded
                outcomes.fail(index, PublishError(f"rabbitmq: cannot encode {message.id}: {error}"))
                return None
            # Tasks start in creation order and take the channel's (FIFO) lock in that
            # order, so the frames go out in the order sent; confirmations arrive later.
            return asyncio.ensure_future(self._confirm(exchange, message, amqp_message))

        await outcomes.pipeline(
            send,
            deadline=loop.time() + self.confirm_timeout,
            timed_out=BrokerConnectionError(
                f"rabbitmq: not confirmed within {self.confirm_timeout} s"
            ),
            cancelled=BrokerConnectionError("rabbitmq: the publish was cancelled"),
        )
        if any(isinstance(error, BrokerConnectionError) for error in outcomes.errors):
            await self._drop()
        return outcomes.result()

    async def _confirm(
        self, exchange: AbstractExchange, message: OutboxMessage, amqp_message: aio_pika.Message
    ) -> None:
        """Publish one message and wait for its confirmation; raises the PublishError
        (BrokerConnectionError when the connection is at fault) to report for it."""
        try:
            await exchange.publish(
                amqp_message,
                routing_key=message.topic,
                mandatory=self.mandatory,
                timeout=self.confirm_timeout,
            )
        # aiormq's PublishError (a returned message) is a DeliveryError too.
        except aiormq.exceptions.PublishError:
            raise PublishError(
                f"rabbitmq: {message.id} is unroutable: no queue is bound to "
                f"exchange {self.exchange_name!r} for routing key {message.topic!r}"
            ) from None
        except aiormq.exceptions.DeliveryError as error:
            raise PublishError(
                f"rabbitmq: the broker refused {message.id} ({describe(error)})"
            ) from None
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # this task's own cancellation
            # aiormq's: it cancels the publishes waiting on a connection it closes itself.
            raise BrokerConnectionError(
                "rabbitmq: not confirmed: aiormq closed the connection and cancelled the "
                "publish (no frame from the server for three heartbeat intervals, or lost)"
            ) from None
        except _CONNECTION_ERRORS as error:
            raise BrokerConnectionError(f"rabbitmq: not confirmed: {describe(error)}") from None
        except Exception as error:
            raise PublishError(f"rabbitmq: {describe(error)}") from None

    async def close(self) -> None:
        """Close the connection. Idempotent; never raises; a connection that does not
        close within `connect_timeout` (a server that stopped reading) is aborted."""
        await self._drop()

    async def _drop(self) -> None:
        connection = self._connection
        self._connection = self._channel = self._exchange = None
        if connection is not None:
            await self._close_connection(connection)

    async def _close_connection(self, connection: AbstractConnection) -> None:
        if not connection.is_closed:
            # The aborter is taken first: aio-pika forgets the transport once closing.
            abort = _socket_aborter(connection)
            await close_within(connection.close(), self.connect_timeout, abort)


def _socket_aborter(connection: AbstractConnection) -> Callable[[], None]:
    """A function that drops `connection`'s socket at once, unsent data and all.

    aiormq closes gracefully only: it flushes, sends Connection.Close and waits for the
    socket to drain, which with a server that stopped reading takes three heartbeat
    intervals (about three minutes by default). It keeps the socket's StreamWriter only
    as the argument of its writer task, so it is reached through that task. Best effort:
    a no-op when it cannot be found (aiormq then drops the socket itself once it finds
    the connection stuck); the tests show it is found with the aiormq installed.
    """
    amqp = getattr(getattr(connection, "transport", None), "connection", None)

    def abort() -> None:
        get_coro = getattr(getattr(amqp, "_writer_task", None), "get_coro", None)
        frame = getattr(get_coro(), "cr_frame", None) if callable(get_coro) else None
        writer = frame.f_locals.get("writer") if frame is not None else None
        if isinstance(writer, asyncio.StreamWriter):
            writer.transport.abort()

    return abort


def _amqp_message(message: OutboxMessage) -> aio_pika.Message:
    headers = wire_headers(message)
    return aio_pika.Message(
        encode_payload(message.payload),
        headers=dict(headers),
        content_type="application/json",
        content_encoding="utf-8",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        message_id=message.id,
        correlation_id=headers.get(CORRELATION_HEADER),
        timestamp=message.created_at,
        app_id="sagaz",
    )


# -- consumer side ---------------------------------------------------------------------------


def _where(message: AbstractIncomingMessage) -> str:
    return f"rabbitmq message from exchange {message.exchange!r} key {message.routing_key!r}"


def _header_text(value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode()
    return str(value)


def message_id_of(delivered: AbstractIncomingMessage) -> str:
    """The outbox event id of a delivered message (its AMQP `message_id`).

    Raises MalformedMessageError when it has neither `message_id` nor sagaz's header.
    """
    value = delivered.message_id or (delivered.headers or {}).get(MESSAGE_ID_HEADER)
    return require_id(value, _where(delivered), "message_id")


def decode(delivered: AbstractIncomingMessage) -> ReceivedMessage:
    """A delivered message as a ReceivedMessage (topic = routing key).

    Raises MalformedMessageError naming the message when it has no id or no JSON body.
    """
    message_id = message_id_of(delivered)
    headers = {name: _header_text(value) for name, value in (delivered.headers or {}).items()}
    if delivered.correlation_id and CORRELATION_HEADER not in headers:
        headers[CORRELATION_HEADER] = delivered.correlation_id
    where = f"{_where(delivered)} id {message_id}"
    return ReceivedMessage(
        id=message_id,
        topic=delivered.routing_key or "",
        payload=decode_payload(delivered.body, where),
        key=headers.get(KEY_HEADER),
        headers=headers,
        raw=delivered,
    )


async def declare_bound_queue(
    channel: AbstractChannel,
    queue: str,
    *,
    exchange: str = DEFAULT_EXCHANGE,
    binding_keys: Sequence[str] = ("#",),
    exchange_type: str = "topic",
    durable: bool = True,
    auto_delete: bool = False,
    arguments: dict[str, Any] | None = None,
) -> AbstractQueue:
    """Declare queue `queue` and bind it to `exchange` (declared too, like the broker
    declares it) for each routing pattern in `binding_keys` ("#" = every topic).

    Consume it with `async with queue.iterator() as messages: ...`, process each with
    the inbox and then `await message.ack()`: delivery is at-least-once.
    """
    if not binding_keys:
        raise ConfigurationError("declare_bound_queue needs at least one binding key")
    queue_object = await channel.declare_queue(
        queue, durable=durable, auto_delete=auto_delete, arguments=arguments
    )
    exchange_object = await channel.declare_exchange(
        exchange, aio_pika.ExchangeType(exchange_type), durable=durable
    )
    for routing_key in binding_keys:
        await queue_object.bind(exchange_object, routing_key=routing_key)
    return queue_object
