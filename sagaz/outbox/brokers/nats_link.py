"""One connection of the NATS JetStream broker (`sagaz.outbox.brokers.nats`) and the
JetStream acknowledgements waiting on it: a disconnect or close fails every one still
waiting, so no publish waits past its connection."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from sagaz._util import requires_extra
from sagaz.outbox.brokers.common import BrokerConnectionError, PublishError

with requires_extra("nats", "nats-py", "The NATS JetStream broker"):
    import nats.errors
    from nats.aio.client import Client
    from nats.aio.msg import Msg

__all__ = ["NatsLink"]

_STATUS_HEADER = "Status"
_NO_RESPONDERS = "503"


class NatsLink:
    """One connection and the acknowledgements waiting on it (its reply subscription)."""

    inbox: str

    def __init__(
        self,
        saw_error: Callable[[BaseException], None],
        user_callbacks: dict[str, Callable[..., Any]],
    ) -> None:
        self.client = Client()
        self.saw_error = saw_error
        self.user_callbacks = user_callbacks
        self.pending: dict[str, asyncio.Future[None]] = {}
        self.last_error: BaseException | None = None
        self.stalled: BaseException | None = None

    def fail_pending(self, error: BaseException) -> None:
        pending, self.pending = self.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(error)

    def abort(self) -> None:
        """Drop the socket at once, unsent data and all.

        nats-py has no public abort: its TCP transport keeps the stream writers as
        `_io_writer` (and `_bare_io_writer` under TLS). Best effort: without them the
        close simply takes longer.
        """
        transport = getattr(self.client, "_transport", None)
        for name in ("_io_writer", "_bare_io_writer"):
            writer = getattr(transport, name, None)
            if isinstance(writer, asyncio.StreamWriter):
                writer.transport.abort()

    async def on_error(self, error: Exception) -> None:
        self.last_error = error
        self.saw_error(error)
        if isinstance(error, nats.errors.FlushTimeoutError):
            self.stalled = error
        await self._user_callback("error_cb", error)

    async def on_disconnect(self) -> None:
        self.fail_pending(BrokerConnectionError("nats: disconnected before acknowledgement"))
        await self._user_callback("disconnected_cb")

    async def on_closed(self) -> None:
        self.fail_pending(BrokerConnectionError("nats: connection closed"))
        await self._user_callback("closed_cb")

    async def _user_callback(self, name: str, *args: Any) -> None:
        callback = self.user_callbacks.get(name)
        if callback is not None:
            await callback(*args)

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
