"""NATS JetStream: each outbox event is published to subject = topic and acknowledged by
the stream that captures that subject.

The outbox event id travels as the `Nats-Msg-Id` header, so JetStream itself drops a
repeat published within the stream's duplicate window (default two minutes): a retry
after a lost acknowledgement does not store the message twice. The event's headers (the
correlation id among them) and sagaz's own (`sagaz-message-id`, `sagaz-key`,
`sagaz-saga-id`) travel as NATS headers. A batch is written in order on one connection
without waiting, then every acknowledgement is awaited together.

JetStream only stores subjects some stream captures. Either the application creates the
stream, or pass `stream=` and `subjects=` and the broker creates it on connect (or adds
missing subjects to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import Sequence
from typing import Any

from sagaz.errors import ConfigurationError, MissingExtraError
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
    decode_payload,
    describe,
    encode_payload,
    require_id,
    split_url_options,
    wire_headers,
)

try:
    import nats
    import nats.errors
    import nats.js.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg
    from nats.js import JetStreamContext
    from nats.js.api import StreamConfig, StreamInfo
except ImportError as _missing:  # pragma: no cover - exercised in a subprocess test
    raise MissingExtraError("nats", "nats-py", "The NATS JetStream broker") from _missing

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
_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"

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
    on connect if missing, or add the subjects it lacks. `ack_timeout`: seconds to wait
    for a batch's acknowledgements. `connect_options` go to `nats.connect` as they are.

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
        self._link: _Link | None = None
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
        async with self._connect_lock:
            if self.connected:
                return
            await self._drop()
            self._link = await self._open()

    async def _open(self) -> _Link:
        link = _Link()
        options: dict[str, Any] = {
            "connect_timeout": self.connect_timeout,
            "allow_reconnect": False,
            # nats-py tries each server (max_reconnect_attempts + 1) times before giving
            # up, even without reconnects; 0 would mean forever.
            "max_reconnect_attempts": 1,
            "reconnect_time_wait": 0,
            "error_cb": self._on_error,
            "disconnected_cb": link.on_disconnect,
            "closed_cb": link.on_disconnect,
            **self.connect_options,
        }
        client = await nats.connect(self.servers, **options)
        link.client = client
        try:
            link.inbox = client.new_inbox()
            await client.subscribe(f"{link.inbox}.*", cb=link.on_ack)
            if self.stream is not None:
                await ensure_stream(
                    client.jetstream(),
                    self.stream,
                    self.subjects,
                    duplicate_window=self.duplicate_window,
                )
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise
        return link

    async def publish_batch(self, messages: Sequence[OutboxMessage]) -> Outcomes:
        outcomes = BatchOutcomes(messages)
        if not messages:
            return outcomes.result()
        if not await outcomes.connected("nats", self.connect, self._drop):
            return outcomes.result()
        link = self._link
        assert link is not None
        waiting: dict[int, asyncio.Future[None]] = {}
        loop = asyncio.get_running_loop()
        for index, message in enumerate(messages):
            if outcomes.blocked(index):
                continue
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
            except (nats.errors.ConnectionClosedError, nats.errors.OutboundBufferLimitError) as e:
                link.pending.pop(token, None)
                lost = BrokerConnectionError(f"nats: connection lost: {describe(e)}")
                outcomes.fail_all(range(index, len(messages)), lost)
                break
            except Exception as error:  # a bad subject or header, too large a payload, ...
                link.pending.pop(token, None)
                outcomes.fail(index, PublishError(f"nats: cannot publish {message.id}: {error}"))
                continue
            waiting[index] = future
        if waiting:
            _done, not_done = await asyncio.wait(waiting.values(), timeout=self.ack_timeout)
            timed_out = BrokerConnectionError(
                f"nats: no JetStream acknowledgement within {self.ack_timeout} s"
            )
            for index, future in waiting.items():
                if future in not_done:
                    future.cancel()
                    outcomes.fail(index, timed_out)
                elif (failure := future.exception()) is not None:
                    outcomes.fail(index, failure)
            for token, future in list(link.pending.items()):
                if future.done():
                    del link.pending[token]
            if not_done or any(
                isinstance(error, BrokerConnectionError) for error in outcomes.errors
            ):
                await self._drop(link)
        return outcomes.result()

    async def close(self) -> None:
        await self._drop()

    async def _drop(self, link: _Link | None = None) -> None:
        """Close `link` (default: the current connection) and fail what waits on it."""
        if link is None or link is self._link:
            link, self._link = self._link, None
        if link is None:
            return
        link.fail_pending(BrokerConnectionError("nats: connection closed"))
        if not link.client.is_closed:
            with contextlib.suppress(Exception):
                await link.client.close()

    async def _on_error(self, error: Exception) -> None:
        self.last_error = error


class _Link:
    """One connection and the acknowledgements waiting on it (its reply subscription)."""

    client: Client
    inbox: str

    def __init__(self) -> None:
        self.pending: dict[str, asyncio.Future[None]] = {}

    def fail_pending(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    async def on_disconnect(self) -> None:
        self.fail_pending(BrokerConnectionError("nats: disconnected before acknowledgement"))

    async def on_ack(self, msg: Msg) -> None:
        future = self.pending.pop(msg.subject.rsplit(".", 1)[-1], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(_STATUS_HEADER) == _NO_RESPONDERS:
            future.set_exception(
                PublishError("nats: no JetStream stream captures this subject (no responders)")
            )
            return
        try:
            response = json.loads(msg.data)
        except ValueError:
            future.set_exception(PublishError(f"nats: unreadable acknowledgement {msg.data!r:.80}"))
            return
        error = response.get("error") if isinstance(response, dict) else None
        if error:
            future.set_exception(PublishError(f"nats: JetStream refused the message: {error}"))
        else:
            future.set_result(None)  # stored, or a duplicate JetStream already had


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
        except nats.errors.TimeoutError:
            break
    return received
