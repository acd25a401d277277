"""Broker consumers: each message processed exactly once, across consumer crashes.

    from sagaz.outbox.consumers import consume

    async def charge(session: AsyncSession, message: ReceivedMessage) -> None:
        session.add(Payment(order_id=message.payload["order_id"]))

    await consume("redis://127.0.0.1:6379/0", "orders.created", "billing", charge, engine)

`consume(url, topic, group, handler, sessions, **options)` runs until cancelled. Each
message's `handler(session, message)` runs in one transaction with the consumer inbox's
record of the message id, and the message is acknowledged only after that commit (see
`sagaz.outbox.consumers.core`). One module per broker, each importing its client library
only inside itself (a missing one raises MissingExtraError naming the extra):

    redis:// rediss://    sagaz.outbox.consumers.redis.RedisStreamsConsumer     [redis]
    amqp:// amqps://      sagaz.outbox.consumers.rabbitmq.RabbitMQConsumer      [rabbitmq]
    nats:// tls://        sagaz.outbox.consumers.nats.NatsJetStreamConsumer     [nats]
    kafka://              sagaz.outbox.consumers.kafka.KafkaConsumer            [kafka]

As a process: `python -m sagaz.outbox.consumers --help`.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers import broker_scheme
from sagaz.outbox.consumers.core import (
    BrokerConsumer,
    ConsumerStats,
    Handler,
    MalformedCallback,
    Sessions,
)

__all__ = [
    "BrokerConsumer",
    "ConsumerStats",
    "Handler",
    "MalformedCallback",
    "Sessions",
    "consume",
    "consumer_from_url",
]

#: URL scheme -> (module under sagaz.outbox.consumers, consumer class).
SCHEMES: dict[str, tuple[str, str]] = {
    "redis": ("redis", "RedisStreamsConsumer"),
    "rediss": ("redis", "RedisStreamsConsumer"),
    "amqp": ("rabbitmq", "RabbitMQConsumer"),
    "amqps": ("rabbitmq", "RabbitMQConsumer"),
    "nats": ("nats", "NatsJetStreamConsumer"),
    "tls": ("nats", "NatsJetStreamConsumer"),
    "kafka": ("kafka", "KafkaConsumer"),
}


def consumer_from_url(
    url: str, topic: str, group: str, handler: Handler, sessions: Sessions, **options: Any
) -> BrokerConsumer:
    """The consumer for `url`'s broker, not yet started (`await consumer.run()`).

    `options` are the consumer class's keyword options and override the same options
    given as URL query parameters. Raises ConfigurationError for an unknown scheme or an
    invalid option, MissingExtraError when the broker's client library is not installed.
    """
    scheme = broker_scheme(url, "consumer URL")
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"there is no consumer for {scheme}:// (a broker of this process only); use one "
            "of " + ", ".join(f"{known}://" for known in SCHEMES)
        )
    module_name, class_name = SCHEMES[scheme]
    module = importlib.import_module(f"{__name__}.{module_name}")
    consumer_class = getattr(module, class_name)
    try:
        return cast(
            BrokerConsumer,
            consumer_class.from_url(url, topic, group, handler, sessions, **options),
        )
    except TypeError as error:
        raise ConfigurationError(f"{class_name}: {error}") from None


async def consume(
    url: str, topic: str, group: str, handler: Handler, sessions: Sessions, **options: Any
) -> None:
    """Consume `topic` as consumer group `group` until cancelled, processing each message
    exactly once with `handler(session, message)`: the handler's writes through `session`
    and the inbox record of the message id commit together, and the message is
    acknowledged only after that commit. `sessions`: an `async_sessionmaker` or an
    `AsyncEngine`. See docs/brokers.md for each broker's options and guarantees."""
    await consumer_from_url(url, topic, group, handler, sessions, **options).run()
