"""`SagaContextMiddleware`: the correlation id of every request, as pure ASGI middleware.

It needs no web framework: Starlette, FastAPI, Litestar, Quart or a bare ASGI app can use
it (``app = SagaContextMiddleware(app)``, or ``app.add_middleware(SagaContextMiddleware)``).
`sagaz.integrations.fastapi.SagaContextMiddleware` is this class.
"""

from __future__ import annotations

import warnings
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from sagaz.context import SagaContextManager
from sagaz.integrations._core.correlation import (
    CORRELATION_ID_HEADER,
    correlation_id_from,
    validate_header_name,
)

__all__ = ["SagaContextMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_UNSET: Any = object()


class SagaContextMiddleware:
    """Pure ASGI middleware that gives each request a correlation id.

    The id comes from the `correlation_header` request header (default
    ``X-Correlation-ID``) when it is at most 128 characters of ``[A-Za-z0-9._:-]``;
    anything else (missing, too long, CR/LF, non-ASCII) is replaced by a fresh id and
    never reflected. Sagas started and outbox events added while the request is handled -
    background tasks included - record it (the `correlation-id` outbox header), and the
    response carries it in `correlation_header` (unless the application set that header
    itself). WebSocket connections get an id too; lifespan messages pass through
    untouched.

    `header_name` is the deprecated name of `correlation_header` (DeprecationWarning).
    A header name that is not ASCII letters, digits and ``-`` raises ConfigurationError.
    """

    def __init__(
        self,
        app: ASGIApp,
        correlation_header: str = CORRELATION_ID_HEADER,
        *,
        header_name: str = _UNSET,
    ) -> None:
        setting = "correlation_header"
        if header_name is not _UNSET:
            warnings.warn(
                "SagaContextMiddleware(header_name=...) is deprecated: use correlation_header=...",
                DeprecationWarning,
                stacklevel=2,
            )
            correlation_header, setting = header_name, "header_name"
        self.app = app
        self.correlation_header = validate_header_name(correlation_header, setting=setting)
        self._header = correlation_header.lower().encode("latin-1")

    @property
    def header_name(self) -> str:
        """Deprecated: `correlation_header`."""
        return self.correlation_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        raw: bytes | None = None
        for name, value in scope.get("headers", ()):
            if name.lower() == self._header:
                raw = value
                break
        correlation_id = correlation_id_from(raw)
        header = self._header

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if not any(name.lower() == header for name, _value in headers):
                    headers.append((header, correlation_id.encode("ascii")))
                    message = {**message, "headers": headers}
            await send(message)

        with SagaContextManager.scope(correlation_id):
            await self.app(scope, receive, send_with_id)
