"""What the broker modules share: publish errors, the wire format, per-key order, URL options.

Every broker sends the same things with a message: the payload as compact UTF-8 JSON,
the outbox event's headers (the correlation id travels as `correlation-id`), and these
headers of sagaz's own - the event id as `sagaz-message-id` (besides the broker's native
message id / dedup field), the key as `sagaz-key` and the saga id as `sagaz-saga-id` when
there is one. `ReceivedMessage` is what the consumer helpers of each broker module decode
a delivered message into.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from sagaz._util import describe, redact_url
from sagaz.errors import ConfigurationError, SagazError
from sagaz.outbox.brokers.base import MESSAGE_ID_HEADER, OutboxMessage
from sagaz.outbox.events import CORRELATION_HEADER as CORRELATION_HEADER

#: The header carrying the message key (brokers with a native key field send it there too).
KEY_HEADER = "sagaz-key"
#: The header carrying the id of the saga that added the event, when one did.
SAGA_ID_HEADER = "sagaz-saga-id"

Outcomes = list[BaseException | None]


class PublishError(SagazError):
    """The broker did not confirm a message; the outbox relay retries it later."""


class BrokerConnectionError(PublishError):
    """The connection to the broker could not be opened or was lost before confirmation.

    The message may or may not have reached the broker: a retry can make a duplicate,
    which the event id lets consumers (or the broker's own dedup) drop.
    """


class EarlierMessageFailedError(PublishError):
    """Not published, or not counted as confirmed, because an earlier message of the same
    batch with the same key failed: per-key order requires retrying them in order."""

    def __init__(self, key: str, earlier_id: str) -> None:
        super().__init__(
            f"an earlier message with key {key!r} (id {earlier_id}) was not confirmed; "
            "this one is retried after it to keep per-key order"
        )
        self.key = key
        self.earlier_id = earlier_id


class MalformedMessageError(SagazError, ValueError):
    """A delivered message lacks what sagaz puts in it (id, JSON payload, headers).

    The message says which broker, which field and where the message came from.
    """


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message as a consumer received it, decoded from any broker.

    `id` is the outbox event id: pass it, with a consumer name, to
    `sagaz.outbox.inbox.process_once` to process the message exactly once. `raw` is the
    broker's own delivered object (to ack it, read broker-specific fields, ...).
    """

    id: str
    topic: str
    payload: Any
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    raw: Any = None

    @property
    def correlation_id(self) -> str | None:
        return self.headers.get(CORRELATION_HEADER)


def encode_payload(payload: Any) -> bytes:
    """The payload as compact UTF-8 JSON (what every broker sends)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode_payload(data: bytes | str, where: str) -> Any:
    """Parse a delivered JSON payload; MalformedMessageError names `where` when it is not JSON."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise MalformedMessageError(f"{where}: the payload is not UTF-8 JSON ({error})") from None


def wire_headers(message: OutboxMessage) -> dict[str, str]:
    """The outbox headers plus sagaz's own: message id, key and saga id."""
    headers = dict(message.headers)
    headers[MESSAGE_ID_HEADER] = message.id
    if message.key is not None:
        headers[KEY_HEADER] = message.key
    if message.saga_id is not None:
        headers[SAGA_ID_HEADER] = message.saga_id
    return headers


def require_id(value: object, where: str, field_name: str) -> str:
    """`value` as a non-empty str message id, else MalformedMessageError naming the field."""
    if isinstance(value, bytes):
        try:
            value = value.decode()
        except UnicodeDecodeError:
            value = None
    if not isinstance(value, str) or not value:
        raise MalformedMessageError(f"{where}: no message id in {field_name}")
    return value


class BatchOutcomes:
    """The per-message outcomes of one publish_batch call, and the order to send in.

    Per-key order is kept by *when* a message is sent, not only by how it is reported:
    a message with a key is sent only once the previous message of its key in the batch
    was confirmed. When one fails (refused, unconfirmed, or not sendable), every later
    message of its key in the batch is not sent at all and is reported
    `EarlierMessageFailedError` (the relay hands it back without counting an attempt).
    So the broker never holds a message of a key before an earlier one of the same key
    it was given. The first message of each key and messages without a key go out at
    once, in batch order: `pipeline` (one confirmation per message) and `waves` (one
    round trip per group) drive that; a broker that sends one message at a time and
    knows each outcome before the next may simply skip the `blocked` ones.
    """

    __slots__ = ("_sent", "_successor", "errors", "heads", "messages")

    def __init__(self, messages: Sequence[OutboxMessage]) -> None:
        self.messages = messages
        self.errors: Outcomes = [None] * len(messages)
        self._sent = [False] * len(messages)
        #: The next message of the same key in the batch, per message.
        self._successor: list[int | None] = [None] * len(messages)
        #: The messages free to be sent at once: the first of each key, those without one.
        self.heads: list[int] = []
        last: dict[str, int] = {}
        for index, message in enumerate(messages):
            if message.key is not None:
                previous = last.get(message.key)
                last[message.key] = index
                if previous is not None:
                    self._successor[previous] = index
                    continue
            self.heads.append(index)

    def fail(self, index: int, error: BaseException) -> None:
        """Record `error` for message `index`; the later messages of its key in the batch
        are not to be sent (EarlierMessageFailedError, unless they already failed)."""
        self.errors[index] = error
        failed = self.messages[index]
        follower = self._successor[index]
        # A follower with an outcome already has its own followers marked too.
        while follower is not None and self.errors[follower] is None and failed.key is not None:
            self.errors[follower] = EarlierMessageFailedError(failed.key, failed.id)
            follower = self._successor[follower]

    def fail_all(self, indexes: Iterable[int], error: BaseException) -> None:
        for index in indexes:
            self.fail(index, error)

    def stop(self, error: BaseException) -> None:
        """Send nothing more: every message not sent yet and without an outcome fails
        with `error` (a lost or stalled connection)."""
        for index, sent in enumerate(self._sent):
            if not sent and self.errors[index] is None:
                self.errors[index] = error

    def blocked(self, index: int) -> bool:
        """True when message `index` already has an outcome (an earlier message of its
        key failed) and must not be sent; for brokers that send one message at a time."""
        return self.errors[index] is not None

    def waves(self) -> Iterator[list[int]]:
        """The batch as groups to send one after another, each as one round trip: the
        first group is `heads`; each next one holds the followers of the messages of the
        previous group that did not fail. Record the failures of a group (`fail`) before
        asking for the next; a message not failed by then counts as confirmed."""
        ready = [index for index in self.heads if self.errors[index] is None]
        while ready:
            for index in ready:
                self._sent[index] = True
            yield ready
            ready = [
                follower
                for index in ready
                if self.errors[index] is None
                and (follower := self._successor[index]) is not None
                and self.errors[follower] is None
            ]

    async def pipeline(
        self,
        send: Callable[[int], Awaitable[asyncio.Future[Any] | None]],
        *,
        deadline: float | None,
        timed_out: BaseException,
        cancelled: BaseException,
    ) -> None:
        """Send the batch through `send` without waiting between keys, each key in order.

        `send(index)` writes message `index` and returns the future of its confirmation
        (an exception in it fails the message), or None when it recorded the message's
        failure itself (it may also `stop` the batch). The `heads` are sent at once, in
        batch order; each later message of a key once the previous one's confirmation
        came back successfully. Returns when every sent message is settled, or when the
        event loop's clock reaches `deadline` (None: no limit): what is unconfirmed then fails with
        `timed_out` (its future cancelled). A future cancelled by someone else fails its
        message with `cancelled`. If the call itself is cancelled, so are the futures."""
        in_flight: dict[int, asyncio.Future[Any]] = {}
        settled: list[int] = []
        wake = asyncio.Event()

        async def launch(index: int) -> None:
            self._sent[index] = True
            future = await send(index)
            if future is not None:
                in_flight[index] = future
                future.add_done_callback(lambda _: settle(index))

        def settle(index: int) -> None:
            settled.append(index)
            wake.set()

        try:
            for index in self.heads:
                if self.errors[index] is None:
                    await launch(index)
            while in_flight:
                if not settled:
                    try:
                        async with asyncio.timeout_at(deadline):
                            await wake.wait()
                    except TimeoutError:
                        for index, future in in_flight.items():
                            future.cancel()
                            self.fail(index, timed_out)
                        return
                wake.clear()
                done = settled.copy()
                settled.clear()
                for index in done:
                    future = in_flight.pop(index)
                    if future.cancelled():
                        self.fail(index, cancelled)
                    elif (error := future.exception()) is not None:
                        self.fail(index, error)
                    elif (follower := self._successor[index]) is not None and (
                        self.errors[follower] is None
                    ):
                        await launch(follower)
        finally:
            for future in in_flight.values():
                future.cancel()

    async def connected(
        self,
        broker: str,
        connect: Callable[[], Awaitable[None]],
        drop: Callable[[], Awaitable[None]] | None = None,
    ) -> bool:
        """Connect before sending; when that fails, drop what is half-open, mark every
        message of the batch failed (the relay retries them) and return False.

        A BrokerConnectionError from `connect` is reported as it is (it names the URL);
        any other error is wrapped in one."""
        try:
            await connect()
        except Exception as error:
            if drop is not None:
                await drop()
            lost = (
                error
                if isinstance(error, BrokerConnectionError)
                else BrokerConnectionError(f"{broker}: cannot connect: {describe(error)}")
            )
            self.stop(lost)
            return False
        return True

    def result(self) -> Outcomes:
        return self.errors


def connect_error(
    broker: str, url: str, error: BaseException, timeout: float | None = None
) -> BrokerConnectionError:
    """The error a broker's connect() raises: it names the broker, the URL (redacted)
    and the cause (`timeout`, when given, explains a bare TimeoutError)."""
    cause = describe(error)
    if isinstance(error, TimeoutError) and not str(error) and timeout is not None:
        cause = f"TimeoutError: no answer within {timeout:g} s"
    return BrokerConnectionError(f"{broker}: cannot connect to {redact_url(url)}: {cause}")


async def close_within(closing: Awaitable[object], grace: float, abort: Callable[[], None]) -> None:
    """Await a client's close for at most `grace` seconds, then, if it has not finished
    (a peer that stopped reading keeps the socket's send buffer from draining, and a
    graceful close waits for it), call `abort` to drop the socket at once and give the
    close another `grace` to finish. Never raises for a failed close; if cancelled,
    aborts before re-raising, so no socket outlives the call either way."""
    task = asyncio.ensure_future(closing)
    try:
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            abort()
            done, _ = await asyncio.wait({task}, timeout=grace)
    except asyncio.CancelledError:
        abort()
        task.cancel()
        task.add_done_callback(_consume)
        raise
    if not done:  # the client ignores the abort; stop waiting for it
        task.cancel()
    task.add_done_callback(_consume)


def _consume(task: asyncio.Future[object]) -> None:
    if not task.cancelled():
        task.exception()


# -- URL options ---------------------------------------------------------------------------


def as_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


OptionParsers = Mapping[str, Callable[[str], Any]]


def split_url_options(url: str, parsers: OptionParsers) -> tuple[str, dict[str, Any]]:
    """Take the query parameters named in `parsers` out of `url`.

    Returns the URL without them (other parameters stay for the client library) and the
    parsed options. Raises ConfigurationError naming the option when a value is invalid.
    """
    parts = urlsplit(url)
    if not parts.query:
        return url, {}
    kept: list[tuple[str, str]] = []
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        parser = parsers.get(name)
        if parser is None:
            kept.append((name, value))
            continue
        try:
            options[name] = parser(value)
        except (TypeError, ValueError) as error:
            raise ConfigurationError(f"broker URL option {name}={value!r}: {error}") from None
    return urlunsplit(parts._replace(query=urlencode(kept))), options
