"""broker_from_url: schemes, options from the query string and from keywords, errors."""

from __future__ import annotations

import pytest

from sagaz._util import redact_url
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers import Broker, InMemoryBroker, broker_from_url
from sagaz.outbox.brokers.kafka import KafkaBroker
from sagaz.outbox.brokers.nats import NatsJetStreamBroker
from sagaz.outbox.brokers.rabbitmq import RabbitMQBroker
from sagaz.outbox.brokers.redis import RedisStreamsBroker


def test_memory() -> None:
    broker = broker_from_url("memory://")
    assert isinstance(broker, InMemoryBroker)
    assert broker.delay == 0
    assert broker_from_url("memory://?delay=0.5").delay == 0.5  # type: ignore[attr-defined]
    assert broker_from_url("memory://", delay=0.25).delay == 0.25  # type: ignore[attr-defined]


def test_redis_options_from_query_and_keywords() -> None:
    broker = broker_from_url(
        "redis://:secret@127.0.0.1:6379/2?maxlen=1000&stream_prefix=app.&health_check_interval=5",
        socket_timeout=3,
    )
    assert isinstance(broker, RedisStreamsBroker)
    assert isinstance(broker, Broker)
    assert broker.maxlen == 1000
    assert broker.stream_prefix == "app."
    assert broker.socket_timeout == 3
    # sagaz's options are taken out; the client library's stay in the URL.
    assert broker.url == "redis://:secret@127.0.0.1:6379/2?health_check_interval=5"
    assert isinstance(broker_from_url("rediss://h:6380/0"), RedisStreamsBroker)


def test_rabbitmq() -> None:
    broker = broker_from_url(
        "amqp://guest:guest@127.0.0.1:5672/?exchange=orders&exchange_type=direct&mandatory=true"
    )
    assert isinstance(broker, RabbitMQBroker)
    assert broker.exchange_name == "orders"
    assert broker.exchange_type.value == "direct"
    assert broker.mandatory is True
    assert broker.url == "amqp://guest:guest@127.0.0.1:5672/"
    assert broker_from_url("amqps://h/", exchange="").exchange_name == ""  # type: ignore[attr-defined]


def test_nats() -> None:
    broker = broker_from_url(
        "nats://127.0.0.1:4222,nats://127.0.0.1:4223?stream=ORDERS&subjects=orders.>,pay.*"
        "&ack_timeout=2.5"
    )
    assert isinstance(broker, NatsJetStreamBroker)
    assert broker.servers == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223"]
    assert broker.stream == "ORDERS"
    assert broker.subjects == ["orders.>", "pay.*"]
    assert broker.ack_timeout == 2.5
    with pytest.raises(ConfigurationError, match="unknown option"):
        broker_from_url("nats://127.0.0.1:4222?bogus=1")


def test_kafka() -> None:
    broker = broker_from_url("kafka://k1:9092,k2:9092?client_id=orders&linger_ms=20")
    assert isinstance(broker, KafkaBroker)
    assert broker.bootstrap_servers == "k1:9092,k2:9092"
    assert broker.options["client_id"] == "orders"
    assert broker.options["linger_ms"] == 20
    assert broker.options["enable_idempotence"] is True
    assert broker.options["acks"] == "all"
    forced = KafkaBroker(producer_options={"enable_idempotence": False, "acks": 1})
    assert forced.options["enable_idempotence"] is True
    assert forced.options["acks"] == "all"


def test_unknown_scheme_is_a_clear_error() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown broker URL scheme 'sqs://'.*redis://"):
        broker_from_url("sqs://queue")
    with pytest.raises(ConfigurationError, match="must look like scheme://"):
        broker_from_url("localhost:6379")


def test_bad_option_values_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match=r"maxlen='lots'"):
        broker_from_url("redis://h/0?maxlen=lots")
    with pytest.raises(ConfigurationError, match=r"mandatory='maybe'.*not a boolean"):
        broker_from_url("amqp://h/?mandatory=maybe")
    with pytest.raises(ConfigurationError, match=r"RedisStreamsBroker: .*unexpected keyword"):
        broker_from_url("redis://h/0", no_such_option=1)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@h:6379/0?password=pw2", "redis://:***@h:6379/0"),
        ("amqp://guest:guest@h:5672/vhost", "amqp://guest:***@h:5672/vhost"),
        ("nats://t0ken@h:4222", "nats://***@h:4222"),  # a lone user part may be a token
        ("nats://a:4222,nats://u:p@b:4222", "nats://a:4222,nats://u:***@b:4222"),
        ("amqp://h", "amqp://h"),
        ("127.0.0.1:9092,h2:9093", "127.0.0.1:9092,h2:9093"),
        ("redis://[::1:6379", "<unparsable URL>"),
    ],
)
def test_urls_in_error_messages_hide_secrets(url: str, shown: str) -> None:
    assert redact_url(url) == shown
