"""NATS JetStream consumer: a durable pull consumer with explicit acknowledgements.

The durable consumer (named after the group, created if missing, its settings updated
if they changed) lives in the server: every process of the group pulls from it, and
what one process received but did not acknowledge within `ack_wait` seconds is delivered
again - to any of them. A message is acknowledged only after its transaction committed;
a failed handler `nak`s it with a delay of `retry_delay` seconds; an unreadable message
is terminated (`term`: never delivered again). With `max_deliver` set, a message whose
handler failed on its last allowed delivery is terminated and logged at ERROR (the
server would stop delivering it anyway).

`ack_wait` must be longer than the handler's longest run: a message still being
processed when it expires is delivered again concurrently (the inbox still runs the
handler once, the second copy waiting for the first transaction).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

from sagaz._util import requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.common import OptionParsers, ReceivedMessage
from sagaz.outbox.brokers.nats import _URL_OPTIONS as BROKER_URL_OPTIONS
from sagaz.outbox.brokers.nats import decode
from sagaz.outbox.consumers.core import (
    BrokerConsumer,
    Delivery,
    Handler,
    Sessions,
    close_quietly,
    logger,
)

with requires_extra("nats", "nats-py", "The NATS JetStream consumer"):
    import nats.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

__all__ = ["NatsJetStreamConsumer"]

#: JetStream consumer names: no whitespace, `.`, `*`, `>`, path separators.
_DURABLE_NAME = re.compile(r"^[^\s.*>/\\]+$")


@dataclass(slots=True)
class _Message:
    consumer: NatsJetStreamConsumer
    raw: Msg

    def decode(self) -> ReceivedMessage:
        return decode(self.raw)

    async def ack(self) -> None:
        await self.raw.ack()

    async def retry(self, error: BaseException) -> None:
        limit = self.consumer.max_deliver
        if limit is not None and self.raw.metadata.num_delivered >= limit:
            logger.error(
                "nats consumer %s: gave up on a message after %d deliveries (max_deliver), "
                "terminated: stream sequence %s",
                self.consumer.group,
                limit,
                self.raw.metadata.sequence.stream if self.raw.metadata.sequence else "?",
            )
            await self.raw.term()
            return
        await self.raw.nak(delay=self.consumer.retry_delay)

    async def reject(self, error: BaseException) -> None:
        await self.raw.term()


class NatsJetStreamConsumer(BrokerConsumer):
    """Consumes subject `subject_prefix + topic` through durable pull consumer `group`.

    Options: `stream` (the stream capturing the subject; found by subject when not
    given), `ack_wait` (30 s), `max_deliver` (None: unlimited), `batch_size` (100 per
    fetch), `fetch_timeout` (1 s: how long one fetch waits), `connect_timeout` (5 s),
    `retry_delay` (1 s: the nak delay). The broker's URL options are accepted; those
    that are not the consumer's (`subjects`, `duplicate_window`, ...) are ignored.
    """

    broker = "nats"
    url_options: ClassVar[OptionParsers] = {
        "stream": str,
        "subject_prefix": str,
        "ack_wait": float,
        "max_deliver": int,
        "batch_size": int,
        "fetch_timeout": float,
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
        stream: str | None = None,
        subject_prefix: str = "",
        ack_wait: float = 30.0,
        max_deliver: int | None = None,
        batch_size: int = 100,
        fetch_timeout: float = 1.0,
        connect_timeout: float = 5.0,
        connect_options: dict[str, Any] | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, topic, group, handler, sessions, **options)
        if not _DURABLE_NAME.match(group):
            raise ConfigurationError(
                f"nats consumer: group {group!r} cannot name a durable consumer "
                "(no whitespace, '.', '*', '>', '/' or '\\')"
            )
        if ack_wait <= 0 or fetch_timeout <= 0 or batch_size < 1:
            raise ConfigurationError(
                "nats consumer: need ack_wait > 0, fetch_timeout > 0, batch_size >= 1"
            )
        if max_deliver is not None and max_deliver < 1:
            raise ConfigurationError("nats consumer: max_deliver must be >= 1 (or None)")
        self.servers = [server.strip() for server in url.split(",") if server.strip()]
        self.subject = subject_prefix + topic
        self.stream = stream
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.batch_size = batch_size
        self.fetch_timeout = fetch_timeout
        self.connect_timeout = connect_timeout
        self.connect_options = dict(connect_options or {})
        self._client: Client | None = None
        self._subscription: JetStreamContext.PullSubscription | None = None

    @classmethod
    def client_url(cls, url: str) -> str:
        servers, _, unknown = url.partition("?")
        if unknown:
            raise ConfigurationError(f"NATS consumer URL: unknown option(s) {unknown!r}")
        return servers

    def consumer_config(self) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=self.group,
            name=self.group,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver or -1,
            filter_subject=self.subject,
        )

    async def _open(self) -> None:
        client = Client()
        self._client = client
        await client.connect(
            self.servers,
            **{
                "connect_timeout": self.connect_timeout,
                "allow_reconnect": False,
                "max_reconnect_attempts": 1,
                "reconnect_time_wait": 0,
                **self.connect_options,
            },
        )
        js = client.jetstream(timeout=self.connect_timeout)
        stream = self.stream or await js.find_stream_name_by_subject(self.subject)
        await js.add_consumer(stream, config=self.consumer_config())  # creates or updates
        self._subscription = await js.pull_subscribe_bind(
            durable=self.group, stream=stream, name=self.group
        )

    async def _close(self) -> None:
        client, self._client, self._subscription = self._client, None, None
        if client is not None and not client.is_closed:
            await close_quietly(asyncio.wait_for(client.close(), self.connect_timeout))

    async def _receive(self) -> Iterable[Delivery]:
        assert self._subscription is not None
        assert self._client is not None
        if not self._client.is_connected:
            raise nats.errors.ConnectionClosedError
        try:
            fetched = await self._subscription.fetch(self.batch_size, timeout=self.fetch_timeout)
        except TimeoutError:  # nothing arrived (nats' TimeoutError is one too)
            return []
        return [_Message(self, msg) for msg in fetched]
