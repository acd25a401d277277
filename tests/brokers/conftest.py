"""Broker test fixtures: the real servers of this machine and TCP proxies in front of them.

Servers: Redis 127.0.0.1:6379, RabbitMQ 127.0.0.1:5672 (guest/guest), NATS with
JetStream 127.0.0.1:4222 (`.ci/run` starts them). A server that does not answer skips its
tests with a reason, except under CI, where it fails them.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.brokers.broker_helpers import TcpProxy

REDIS = ("127.0.0.1", 6379)
RABBITMQ = ("127.0.0.1", 5672)
NATS = ("127.0.0.1", 4222)


def _answers(address: tuple[str, int]) -> bool:
    try:
        with socket.create_connection(address, timeout=1):
            return True
    except OSError:
        return False


def require_server(name: str, address: tuple[str, int]) -> None:
    if _answers(address):
        return
    reason = f"{name} does not answer on {address[0]}:{address[1]} (run .ci/run to start it)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture
def unique() -> str:
    """A short unique token for topic, stream, queue and exchange names."""
    return uuid.uuid4().hex[:12]


@pytest.fixture
async def make_proxy() -> AsyncIterator[Callable[[tuple[str, int]], Awaitable[TcpProxy]]]:
    proxies: list[TcpProxy] = []

    async def make(target: tuple[str, int]) -> TcpProxy:
        proxy = TcpProxy(target)
        await proxy.start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        await proxy.close()
