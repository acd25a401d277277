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
from collections.abc import Awaitable, Callable, Mapping, Sequence
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
    """The per-message outcomes of one publish_batch call, kept in per-key order.

    Brokers send messages in the given order and record failures here; `blocked(i)`
    tells them not to send a message whose key already failed in this batch, and
    `result()` reports any message confirmed after an earlier same-key failure as failed
    too (the protocol: same-key messages are confirmed in order, or reported failed from
    the first unconfirmed one on).
    """

    __slots__ = ("_failed_keys", "errors", "messages")

    def __init__(self, messages: Sequence[OutboxMessage]) -> None:
        self.messages = messages
        self.errors: Outcomes = [None] * len(messages)
        self._failed_keys: dict[str, str] = {}

    def fail(self, index: int, error: BaseException) -> None:
        self.errors[index] = error
        key = self.messages[index].key
        if key is not None:
            self._failed_keys.setdefault(key, self.messages[index].id)

    def fail_all(self, indexes: Sequence[int], error: BaseException) -> None:
        for index in indexes:
            self.fail(index, error)

    def blocked(self, index: int) -> bool:
        """True (and the message marked failed) when an earlier same-key message failed."""
        key = self.messages[index].key
        if key is None or key not in self._failed_keys:
            return False
        self.errors[index] = EarlierMessageFailedError(key, self._failed_keys[key])
        return True

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
            self.fail_all(range(len(self.messages)), lost)
            return False
        return True

    def result(self) -> Outcomes:
        first_failure: dict[str, str] = {}
        for index, message in enumerate(self.messages):
            key = message.key
            if key is None:
                continue
            if key in first_failure:
                if self.errors[index] is None:
                    self.errors[index] = EarlierMessageFailedError(key, first_failure[key])
            elif self.errors[index] is not None:
                first_failure[key] = message.id
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
