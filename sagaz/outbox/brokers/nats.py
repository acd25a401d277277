"""NATS JetStream: each outbox event is published to subject = topic and acknowledged by
the stream that captures that subject.

The outbox event id travels as the `Nats-Msg-Id` header, so JetStream itself drops a
repeat published within the stream's duplicate window (default two minutes): a retry
after a lost acknowledgement does not store the message twice. The event's headers (the
correlation id among them) and sagaz's own (`sagaz-message-id`, `sagaz-key`,
`sagaz-saga-id`) travel as NATS headers. A batch is written on one connection without
waiting between keys; a message is written only once the previous one of its key was
acknowledged (`BatchOutcomes.pipeline`), so a refused message is never overtaken by a
later one of its key.

JetStream only stores subjects some stream captures. Either the application creates the
stream, or pass `stream=` and `subjects=` and the broker creates it on connect (or adds
missing subjects to it).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from typing import Any

from sagaz._util import describe, requires_extra
from sagaz.errors import ConfigurationError
from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, OutboxMessage
from sagaz.outbox.brokers.common import (
    KEY_HEADER,
    BatchOutcomes,
    BrokerConnectionError,
    OptionParsers,
    Outcomes,
    PublishError,
    ReceivedMessage,
    as_list,
    close_within,
    connect_error,
    decode_payload,
    encode_payload,
    require_id,
    split_url_options,
    wire_headers,
)
from sagaz.outbox.brokers.nats_link import NatsLink

with requires_extra("nats", "nats-py", "The NATS JetStream broker"):
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig, StreamInfo

__all__ = [
    "MSG_ID_HEADER",
    "NatsJetStreamBroker",
    "decode",
    "ensure_stream",
    "fetch",
    "message_id_of",
]

#: JetStream's deduplication header.
MSG_ID_HEADER = "Nats-Msg-Id"

_URL_OPTIONS: OptionParsers = {
    "stream": str,
    "subjects": as_list,
    "subject_prefix": str,
    "duplicate_window": float,
    "ack_timeout": float,
    "connect_timeout": float,
}


class NatsJetStreamBroker:
    """Publishes outbox events to NATS JetStream, deduplicated by `Nats-Msg-Id`.

    `url` may list several servers separated by commas. `subject_prefix` is prepended to
    every topic. `stream` + `subjects` (+ `duplicate_window` seconds): create that stream
    on connect if missing, or add the subjects it lacks. `ack_timeout`: how long, in
    seconds, a batch may take to be written and acknowledged before what is unconfirmed
    fails. `connect_timeout`: for
    connecting, ensuring the stream, and closing before the socket is aborted.
    `connect_options` go to `nats.connect` as they are (its `error_cb`,
    `disconnected_cb` and `closed_cb` are called after the broker's own).

    The client's own reconnect loop is off: a lost connection fails the unacknowledged
    messages of the batch at once, and the next batch connects again.
    """

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        *,
        stream: str | None = None,
        subjects: Sequence[str] | None = None,
        subject_prefix: str = "",
        duplicate_window: float | None = None,
        ack_timeout: float = 10.0,
        connect_timeout: float = 5.0,
        connect_options: dict[str, Any] | None = None,
    ) -> None:
        if subjects is not None and stream is None:
            raise ConfigurationError(
                "NATS broker: `subjects` needs `stream` (the stream to ensure)"
            )
        if stream is not None and not subjects:
            if not subject_prefix:
                raise ConfigurationError(
                    f"NATS broker: stream {stream!r} needs `subjects` (or a `subject_prefix`)"
                )
            subjects = [f"{subject_prefix}>"]
        self.servers = [server.strip() for server in url.split(",") if server.strip()]
        self.stream = stream
        self.subjects = list(subjects or [])
        self.subject_prefix = subject_prefix
        self.duplicate_window = duplicate_window
        self.ack_timeout = ack_timeout
        self.connect_timeout = connect_timeout
        self.connect_options = dict(connect_options or {})
        self._link: NatsLink | None = None
        self._connect_lock = asyncio.Lock()
        self._tokens = itertools.count()
        self.last_error: BaseException | None = None

    @classmethod
    def from_url(cls, url: str, **options: Any) -> NatsJetStreamBroker:
        """`nats://host:4222` (or `tls://`, several comma-separated); options also as query
        parameters: `?stream=ORDERS&subjects=orders.>,payments.>&ack_timeout=5`."""
        base, parsed = split_url_options(url, _URL_OPTIONS)
        servers, _, unknown = base.partition("?")
        if unknown:
            known = ", ".join(_URL_OPTIONS)
            raise ConfigurationError(f"NATS broker URL: unknown option(s) {unknown!r}; use {known}")
        return cls(servers, **{**parsed, **options})

    def subject_of(self, topic: str) -> str:
        return self.subject_prefix + topic

    @property
    def connected(self) -> bool:
        return self._link is not None and self._link.client.is_connected

    async def connect(self) -> None:
        """Connect (and ensure the stream, when `stream` is set). Idempotent.

        Raises BrokerConnectionError naming the server URLs (credentials hidden) and the
        cause when that fails; whatever the attempt opened is closed again first.
        """
        async with self._connect_lock:
            if self.connected:
                return
            await self._drop()
            self._link = await self._open()

    async def _open(self) -> NatsLink:
        user_callbacks = {
            name: self.connect_options[name]
            for name in ("error_cb", "disconnected_cb", "closed_cb")
            if self.connect_options.get(name) is not None
        }
        link = NatsLink(self._saw_error, user_callbacks)
        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "allow_reconnect": False,
            # nats-py tries each server (max_reconnect_attempts + 1) times before giving
            # up, even without reconnects; 0 would mean forever.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            # A forced flush (more than the client's pending buffer written) waits at most
            # this long; without it a server that stops reading blocks publish forever.
            "flush_timeout": self.ack_timeout,
            **self.connect_options,
            "error_cb": link.on_error,
            "disconnected_cb": link.on_disconnect,
            "closed_cb": link.on_closed,
        }
        try:
            await link.client.connect(self.servers, **options)
            link.inbox = link.client.new_inbox()
            await link.client.subscribe(f"{link.inbox}.*", cb=link.on_ack)
            if self.stream is not None:
                await ensure_stream(
                    link.client.jetstream(timeout=self.connect_timeout),
                    self.stream,
                    self.subjects,
                    duplicate_window=self.duplicate_window,
                )
        except BaseException as error:
            await self._close_link(link)
            if not isinstance(error, Exception):
                raise
            cause: BaseException = error
            if isinstance(error, nats.errors.NoServersError) and link.last_error is not None:
                cause = link.last_error  # why the last server could not be reached
            raise connect_error(
                "nats", ",".join(self.servers), cause, self.connect_timeout
            ) from error
        return link

    def _saw_error(self, error: BaseException) -> None:
        self.last_error = error

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        outcomes = BatchOutcomes(messages)
        if not messages:
            return outcomes.result()
        loop = asyncio.get_running_loop()
        if not await outcomes.connected("nats", self.connect, self._drop):
            return outcomes.result()
        link = self._link
        assert link is not None
        # Writing and acknowledging the batch share one deadline.
        deadline = loop.time() + self.ack_timeout

        async def send(index: int) -> asyncio.Future[None] | None:
            message = messages[index]
            token = str(next(self._tokens))
            future: asyncio.Future[None] = loop.create_future()
            link.pending[token] = future
            try:
                headers = wire_headers(message)
                headers[MSG_ID_HEADER] = message.id
                await link.client.publish(
                    self.subject_of(message.topic),
                    encode_payload(message.payload),
                    reply=f"{link.inbox}.{token}",
                    headers=headers,
                )
            except _CONNECTION_ERRORS as error:
                link.pending.pop(token, None)
                lost = BrokerConnectionError(f"nats: connection lost: {describe(error)}")
                outcomes.fail(index, lost)
                outcomes.stop(lost)
                return None
            except Exception as error:  # a bad subject or header, too large a payload, ...
                link.pending.pop(token, None)
                outcomes.fail(index, PublishError(f"nats: cannot publish {message.id}: {error}"))
                return None
            if link.stalled is not None or loop.time() > deadline:
                # The server stopped reading: what is written waits for its
                # acknowledgement (it will not come), the rest is not sent.
                outcomes.stop(
                    BrokerConnectionError(
                        f"nats: the connection stalled (not written within {self.ack_timeout} s)"
                    )
                )
            return future

        try:
            await outcomes.pipeline(
                send,
                deadline=deadline,
                timed_out=BrokerConnectionError(
                    f"nats: no JetStream acknowledgement within {self.ack_timeout} s"
                ),
                cancelled=BrokerConnectionError("nats: the acknowledgement was cancelled"),
            )
        finally:
            for token, future in list(link.pending.items()):
                if future.done():
                    del link.pending[token]
        if any(isinstance(error, BrokerConnectionError) for error in outcomes.errors):
            await self._drop(link)
        return outcomes.result()

    async def close(self) -> None:
        """Close the connection. Idempotent; never raises; a connection that does not
        close within `connect_timeout` (a server that stopped reading) is aborted."""
        await self._drop()

    async def _drop(self, link: NatsLink | None = None) -> None:
        """Close `link` (default: the current connection) and fail what waits on it."""
        if link is None or link is self._link:
            link, self._link = self._link, None
        if link is not None:
            await self._close_link(link)

    async def _close_link(self, link: NatsLink) -> None:
        link.fail_pending(BrokerConnectionError("nats: connection closed"))
        if not link.client.is_closed:
            await close_within(link.client.close(), self.connect_timeout, link.abort)


#: Errors of publish that mean the connection is gone or stuck (the rest of the batch
#: is not sent; the next batch reconnects).
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    nats.errors.ConnectionClosedError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    OSError,
    TimeoutError,
)


async def ensure_stream(
    js: JetStreamContext,
    name: str,
    subjects: Sequence[str],
    *,
    duplicate_window: float | None = None,
) -> StreamInfo:
    """Create JetStream stream `name` capturing `subjects`, or add the subjects it lacks.

    `duplicate_window` (seconds) applies when the stream is created: how long JetStream
    remembers a `Nats-Msg-Id` to drop a repeat (the server's default is two minutes).
    """
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        config = StreamConfig(name=name, subjects=list(subjects))
        if duplicate_window is not None:
            config.duplicate_window = duplicate_window
        return await js.add_stream(config)
    present = list(info.config.subjects or [])
    missing = [subject for subject in subjects if subject not in present]
    if not missing:
        return info
    info.config.subjects = present + missing
    return await js.update_stream(info.config)


# -- consumer side ---------------------------------------------------------------------------


def message_id_of(delivered: Msg) -> str:
    """The outbox event id of a delivered message (its `Nats-Msg-Id` header).

    Raises MalformedMessageError when it has neither that nor sagaz's id header.
    """
    headers = delivered.headers or {}
    value = headers.get(MSG_ID_HEADER) or headers.get(MESSAGE_ID_HEADER)
    return require_id(
        value, f"nats message on {delivered.subject!r}", f"the {MSG_ID_HEADER} header"
    )


def decode(delivered: Msg) -> ReceivedMessage:
    """A delivered message as a ReceivedMessage (topic = subject).

    Raises MalformedMessageError naming the subject when it has no id or no JSON body.
    """
    message_id = message_id_of(delivered)
    headers = dict(delivered.headers or {})
    return ReceivedMessage(
        id=message_id,
        topic=delivered.subject,
        payload=decode_payload(
            delivered.data, f"nats message on {delivered.subject!r} id {message_id}"
        ),
        key=headers.get(KEY_HEADER),
        headers=headers,
        raw=delivered,
    )


async def fetch(
    subscription: JetStreamContext.PullSubscription,
    count: int,
    *,
    max_wait: float = 5.0,
    batch: int = 256,
) -> list[Msg]:
    """Pull up to `count` messages from a pull subscription, waiting at most `max_wait`
    seconds in all. Messages are not acknowledged: call `await msg.ack()` after
    processing (delivery is at-least-once; use the inbox for exactly-once)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + max_wait
    received: list[Msg] = []
    while len(received) < count:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        try:
            received += await subscription.fetch(
                min(batch, count - len(received)), timeout=max(remaining, 0.05)
            )
        except TimeoutError:
            # nats' own TimeoutError is one, and nats-py also raises the plain one when
            # the wait ends just as the server's "request timeout" arrives.
            break
    return received
