"""What every broker's consumer shares: the run loop, the inbox, the ack-after-commit rule.

A consumer receives deliveries from its broker and handles each one in order:

1. decode it; a message sagaz cannot read (no id, a payload that is not JSON, an id the
   inbox cannot store) is *rejected* - acknowledged or terminated, so it never blocks the
   stream - counted in `stats.malformed`, logged at ERROR and passed to `on_malformed`;
2. run `handler(session, message)` through the consumer inbox: the inbox row and the
   handler's writes commit in one transaction, or neither does;
3. only after that commit, *acknowledge* the delivery. A copy the inbox already holds is
   acknowledged without running the handler.

If the handler (or the database) raises, nothing is committed and the delivery is
*retried* the broker's way (left pending, nak'ed or requeued): it is processed again
later. A crash anywhere loses nothing: before the commit, the broker delivers the
message again; between commit and acknowledgement, the redelivered copy is skipped by
the inbox. Processing is therefore exactly once per (group, message id), for the
handler's writes through the session it is given.

Broker connection failures are logged as one WARNING line and the consumer reconnects
after `reconnect_delay` seconds; it runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, Self

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from sagaz._util import describe
from sagaz.errors import ConfigurationError, MissingExtraError
from sagaz.outbox.brokers.common import (
    OptionParsers,
    ReceivedMessage,
    split_url_options,
)
from sagaz.outbox.event_logs import event_fields
from sagaz.outbox.inbox import ConsumerInbox, check_key
from sagaz.tracing import processing_span

__all__ = [
    "BrokerConsumer",
    "ConsumerStats",
    "Delivery",
    "Handler",
    "MalformedCallback",
    "Sessions",
]

logger = logging.getLogger("sagaz.outbox.consumers")

#: `handler(session, message)`: writes through `session` commit with the inbox row.
Handler = Callable[[AsyncSession, ReceivedMessage], Awaitable[Any] | Any]
#: `on_malformed(error, raw)`: told about every message rejected as unreadable.
MalformedCallback = Callable[[BaseException, Any], Awaitable[Any] | Any]
#: Where the consumer's transactions come from.
Sessions = async_sessionmaker[AsyncSession] | AsyncEngine

#: URL query options every consumer takes.
COMMON_URL_OPTIONS: OptionParsers = {
    "name": str,
    "retry_delay": float,
    "reconnect_delay": float,
}

#: Errors that are the consumer's own configuration, never retried by reconnecting.
_FATAL: tuple[type[BaseException], ...] = (ConfigurationError, MissingExtraError)


@dataclass(slots=True)
class ConsumerStats:
    """What a consumer has done since it was created (across reconnects)."""

    processed: int = 0
    """Messages whose handler ran and committed."""
    duplicates: int = 0
    """Copies the inbox had already processed: acknowledged without running the handler."""
    failed: int = 0
    """Handler or database failures; each such delivery was left for redelivery."""
    malformed: int = 0
    """Unreadable messages acknowledged/terminated without running the handler."""
    reconnects: int = 0
    """Broker connections lost or not opened (each followed by a reconnect)."""


class Delivery(Protocol):
    """One delivered message as a broker's consumer hands it to the run loop."""

    @property
    def raw(self) -> Any:
        """The broker's own delivered object."""

    def decode(self) -> ReceivedMessage:
        """The message; raises ValueError (MalformedMessageError) when it is unreadable."""

    async def ack(self) -> None:
        """Acknowledge: the message was processed (its transaction committed)."""

    async def retry(self, error: BaseException) -> None:
        """Processing failed: have the broker deliver the message again later."""

    async def reject(self, error: BaseException) -> None:
        """The message is unreadable: remove it for good (acknowledge or terminate)."""


class BrokerConsumer(ABC):
    """Consumes `topic` as consumer group `group` and processes each message exactly once
    with `handler(session, message)` (see the module docstring for the guarantees).

    `group` is both the broker's consumer group (Redis group, NATS durable consumer,
    RabbitMQ queue by default, Kafka group id) and the inbox's consumer name: every
    replica of one logical consumer uses the same group. `name` identifies this process
    within the group (default: host and pid). `sessions` is an `async_sessionmaker` or
    an `AsyncEngine` (a session maker with `expire_on_commit=False` is built from it).
    """

    broker: ClassVar[str]
    #: The consumer's own URL query options (besides COMMON_URL_OPTIONS).
    url_options: ClassVar[OptionParsers] = {}
    #: The broker's URL query options: accepted and ignored, so the relay's URL fits.
    broker_url_options: ClassVar[OptionParsers] = {}

    def __init__(
        self,
        url: str,
        topic: str,
        group: str,
        handler: Handler,
        sessions: Sessions,
        *,
        name: str | None = None,
        retry_delay: float = 1.0,
        reconnect_delay: float = 1.0,
        on_malformed: MalformedCallback | None = None,
    ) -> None:
        if not isinstance(topic, str) or not topic:
            raise ConfigurationError(f"{self.broker} consumer: topic must be a non-empty str")
        check_key(group, "-")
        if not callable(handler):
            raise ConfigurationError(f"{self.broker} consumer: handler must be callable")
        if retry_delay < 0 or reconnect_delay < 0:
            raise ConfigurationError(
                f"{self.broker} consumer: retry_delay and reconnect_delay must be >= 0"
            )
        if isinstance(sessions, AsyncEngine):
            sessions = async_sessionmaker(sessions, expire_on_commit=False)
        self.url = url
        self.topic = topic
        self.group = group
        self.handler = handler
        self.name = name or default_name()
        self.retry_delay = retry_delay
        self.reconnect_delay = reconnect_delay
        self.on_malformed = on_malformed
        self.inbox = ConsumerInbox(group, sessions)
        self.stats = ConsumerStats()
        self.connected = asyncio.Event()
        """Set while the consumer is connected to its broker and receiving."""

    @classmethod
    def from_url(
        cls, url: str, topic: str, group: str, handler: Handler, sessions: Sessions, **options: Any
    ) -> Self:
        """A consumer with the options of `url`'s query string (`options` win); query
        parameters that are neither the consumer's nor the broker's stay in the URL for
        the client library. ConfigurationError names an invalid value."""
        own = {**COMMON_URL_OPTIONS, **cls.url_options}
        client_url, parsed = split_url_options(url, {**cls.broker_url_options, **own})
        kept = {name: value for name, value in parsed.items() if name in own}
        return cls(
            cls.client_url(client_url), topic, group, handler, sessions, **{**kept, **options}
        )

    @classmethod
    def client_url(cls, url: str) -> str:
        """The URL the client library gets (after sagaz's options were taken out)."""
        return url

    # -- per broker ------------------------------------------------------------------------

    @abstractmethod
    async def _open(self) -> None:
        """Connect and declare what the consumer needs (group, durable consumer, queue)."""

    @abstractmethod
    async def _receive(self) -> Iterable[Delivery]:
        """The next deliveries, waiting a bounded time (empty when none came)."""

    @abstractmethod
    async def _close(self) -> None:
        """Release the connection. Never raises."""

    # -- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        """Consume until cancelled. Raises only for the consumer's own configuration
        (ConfigurationError, MissingExtraError); broker failures reconnect."""
        while True:
            try:
                await self._open()
                self.connected.set()
                logger.info("%s consumer %s/%s connected", self.broker, self.group, self.name)
                while True:
                    for delivery in await self._receive():
                        await self.handle(delivery)
            except _FATAL:
                raise
            except Exception as error:
                self.stats.reconnects += 1
                logger.warning(
                    "%s consumer %s/%s: broker connection failed, reconnecting in %g s: %s",
                    self.broker,
                    self.group,
                    self.name,
                    self.reconnect_delay,
                    describe(error),
                )
                logger.debug("the connection failure", exc_info=True)
            finally:
                self.connected.clear()
                await self._close()
            await asyncio.sleep(self.reconnect_delay)

    async def handle(self, delivery: Delivery) -> None:
        """Process one delivery: decode, run the handler through the inbox, acknowledge
        after the commit (or retry / reject, see the module docstring)."""
        try:
            message = delivery.decode()
            check_key(self.group, message.id)
        except (ValueError, TypeError) as error:
            await self._malformed(delivery, error)
            return
        try:
            # a consumer span parented to the message's traceparent (sagaz.tracing)
            with processing_span(message, consumer=self.group, system=self.broker):
                ran = await self.inbox.process(
                    message.id, lambda session: self.handler(session, message)
                )
        except Exception as error:
            self.stats.failed += 1
            logger.warning(
                "%s consumer %s: message %s failed, it will be delivered again: %s",
                self.broker,
                self.group,
                message.id,
                describe(error),
                extra=event_fields(message),
            )
            logger.debug("the handler failure", exc_info=True)
            await delivery.retry(error)
            return
        if ran:
            self.stats.processed += 1
        else:
            self.stats.duplicates += 1
        await delivery.ack()

    async def _malformed(self, delivery: Delivery, error: BaseException) -> None:
        self.stats.malformed += 1
        logger.error(
            "%s consumer %s: rejected an unreadable message (not processed): %s",
            self.broker,
            self.group,
            describe(error),
        )
        if self.on_malformed is not None:
            try:
                result = self.on_malformed(error, delivery.raw)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                logger.exception("%s consumer %s: on_malformed failed", self.broker, self.group)
        await delivery.reject(error)


def default_name() -> str:
    """`host-pid`: unique per process, stable for its lifetime."""
    return f"{socket.gethostname()[:100]}-{os.getpid()}"


async def close_quietly(closing: Awaitable[Any]) -> None:
    """Await a close and ignore its failure (the connection is being dropped anyway)."""
    with contextlib.suppress(Exception):
        await closing
