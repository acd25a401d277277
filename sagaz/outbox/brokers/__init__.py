"""Outbox brokers: one module per broker, each importing its client only inside itself.

`broker_from_url(url)` picks the module by URL scheme:

    memory://                      sagaz.outbox.brokers.memory.InMemoryBroker
    redis:// rediss://             sagaz.outbox.brokers.redis.RedisStreamsBroker   [redis]
    amqp:// amqps://               sagaz.outbox.brokers.rabbitmq.RabbitMQBroker    [rabbitmq]
    nats:// tls://                 sagaz.outbox.brokers.nats.NatsJetStreamBroker   [nats]
    kafka://                       sagaz.outbox.brokers.kafka.KafkaBroker          [kafka]

A broker whose client library is not installed raises `MissingExtraError` naming the
extra to install. See docs/brokers.md for each broker's options.
"""

from __future__ import annotations

import importlib
from typing import Any, cast

from sagaz._util import scrub_passwords
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, Broker, OutboxMessage
from sagaz.outbox.brokers.common import (
    KEY_HEADER,
    SAGA_ID_HEADER,
    BrokerConnectionError,
    EarlierMessageFailedError,
    MalformedMessageError,
    PublishError,
    ReceivedMessage,
)
from sagaz.outbox.brokers.memory import InMemoryBroker

__all__ = [
    "KEY_HEADER",
    "MESSAGE_ID_HEADER",
    "SAGA_ID_HEADER",
    "Broker",
    "BrokerConnectionError",
    "EarlierMessageFailedError",
    "InMemoryBroker",
    "MalformedMessageError",
    "OutboxMessage",
    "PublishError",
    "ReceivedMessage",
    "broker_from_url",
    "broker_scheme",
]

#: URL scheme -> (module under sagaz.outbox.brokers, broker class).
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("memory", "InMemoryBroker"),
    "redis": ("redis", "RedisStreamsBroker"),
    "rediss": ("redis", "RedisStreamsBroker"),
    "amqp": ("rabbitmq", "RabbitMQBroker"),
    "amqps": ("rabbitmq", "RabbitMQBroker"),
    "nats": ("nats", "NatsJetStreamBroker"),
    "tls": ("nats", "NatsJetStreamBroker"),
    "kafka": ("kafka", "KafkaBroker"),
}


def broker_from_url(url: str, **options: Any) -> Broker:
    """A broker for `url`, not yet connected (the first publish_batch connects).

    `options` are the broker class's keyword options and override the same options given
    as URL query parameters. Raises ConfigurationError for an unknown scheme or option
    value, MissingExtraError when the broker's client library is not installed.
    """
    scheme = broker_scheme(url)
    module_name, class_name = SCHEMES[scheme]
    module = importlib.import_module(f"{__name__}.{module_name}")
    broker_class = getattr(module, class_name)
    try:
        return cast(Broker, broker_class.from_url(url, **options))
    except TypeError as error:
        raise ConfigurationError(f"{class_name}: {error}") from None


def broker_scheme(url: object, setting: str | None = None) -> str:
    """The scheme of a broker URL that `broker_from_url` knows, lowercased (no I/O, no
    import of the broker's client). Raises ConfigurationError - naming `setting`, when
    given, e.g. ``"SagaConfig.broker_url"`` - for a value that is not ``scheme://...`` or
    whose scheme is unknown; the message shows the value with its password hidden."""
    schemes = ", ".join(f"{known}://" for known in SCHEMES)
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"{setting or 'broker URL'} must look like scheme://..., "
            f"got {scrub_passwords(str(url))!r}; schemes: {schemes}"
        )
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"{setting + ' has an ' if setting else ''}unknown broker URL scheme "
            f"{scheme + '://'!r}; use one of {schemes}"
        )
    return scheme
