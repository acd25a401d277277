"""Optional means optional: with every broker client blocked, sagaz, the in-memory broker
and the consumers package still import and work, and each broker and each consumer names
the extra to install."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    # Blocked: `import redis` (and submodules) raises ImportError, as if not installed.
    for name in ("redis", "aio_pika", "aiormq", "nats", "aiokafka"):
        sys.modules[name] = None

    import sagaz
    import sagaz.outbox.brokers
    import sagaz.outbox.inbox
    from sagaz.errors import MissingExtraError
    from sagaz.outbox.brokers import OutboxMessage, broker_from_url

    broker = broker_from_url("memory://")
    published = asyncio.run(broker.publish_batch([OutboxMessage(id="1", topic="t", payload={})]))
    results = {"memory": list(published) == [None]}

    for url in ("redis://h/0", "amqp://h/", "nats://h:4222", "kafka://h:9092"):
        try:
            broker_from_url(url)
        except MissingExtraError as error:
            results[url] = [error.extra, error.module, str(error)]
        else:
            results[url] = None

    for module in ("redis", "rabbitmq", "nats", "kafka"):
        try:
            __import__(f"sagaz.outbox.brokers.{module}")
        except MissingExtraError as error:
            results[module] = error.extra
        else:
            results[module] = None
    results["consumers-loaded-by-sagaz"] = "sagaz.outbox.consumers" in sys.modules
    import sagaz.outbox.consumers
    from sagaz.outbox.consumers import consume, consumer_from_url

    results["outbox.consume"] = sagaz.outbox.consume is consume

    for module in ("redis", "rabbitmq", "nats", "kafka"):
        try:
            __import__(f"sagaz.outbox.consumers.{module}")
        except MissingExtraError as error:
            results[f"consumer-{module}"] = error.extra
        else:
            results[f"consumer-{module}"] = None
    try:
        consumer_from_url("nats://h:4222", "t", "g", lambda session, message: None, None)
    except MissingExtraError as error:
        results["consumer-url"] = error.extra
    leaked = [m for m in ("redis", "aio_pika", "nats", "aiokafka") if sys.modules.get(m)]
    results["leaked"] = leaked
    print(json.dumps(results))
    """
)


def test_brokers_name_their_extra_when_the_client_is_missing() -> None:
    completed = subprocess.run(
        [sys.executable, "-W", "error", "-c", SCRIPT],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    results = json.loads(completed.stdout)
    assert results["memory"] is True
    assert results["leaked"] == []
    expected = {
        "redis://h/0": ("redis", "redis"),
        "amqp://h/": ("rabbitmq", "aio-pika"),
        "nats://h:4222": ("nats", "nats-py"),
        "kafka://h:9092": ("kafka", "aiokafka"),
    }
    for url, (extra, module) in expected.items():
        assert results[url] is not None, f"{url} did not raise MissingExtraError"
        got_extra, got_module, message = results[url]
        assert (got_extra, got_module) == (extra, module)
        assert f"pip install 'sagaz[{extra}]'" in message
    assert [results[m] for m in ("redis", "rabbitmq", "nats", "kafka")] == [
        "redis",
        "rabbitmq",
        "nats",
        "kafka",
    ]
    assert [results[f"consumer-{m}"] for m in ("redis", "rabbitmq", "nats", "kafka")] == [
        "redis",
        "rabbitmq",
        "nats",
        "kafka",
    ]
    assert results["consumer-url"] == "nats"
    assert results["consumers-loaded-by-sagaz"] is False
    assert results["outbox.consume"] is True
