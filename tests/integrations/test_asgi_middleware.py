"""`sagaz.integrations.asgi.SagaContextMiddleware` needs no web framework, and its
`header_name=` is a deprecated alias of `correlation_header=`."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sagaz import ConfigurationError
from sagaz.context import current_correlation_id
from sagaz.integrations.asgi import SagaContextMiddleware
from tests.core.test_optional_imports import run_blocked


def test_the_middleware_imports_and_runs_without_fastapi_or_starlette() -> None:
    done = run_blocked(
        """
        import asyncio, sys

        from sagaz.context import current_correlation_id
        from sagaz.integrations.asgi import SagaContextMiddleware

        sent = []

        async def app(scope, receive, send):
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"x-seen", current_correlation_id().encode())]})

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": [(b"x-request-id", b"abc-1")]}
        middleware = SagaContextMiddleware(app, correlation_header="X-Request-ID")
        asyncio.run(middleware(scope, None, send))
        print(sorted(sent[0]["headers"]))
        print("fastapi" in sys.modules, "starlette" in sys.modules)
        """
    )
    assert done.returncode == 0, done.stderr
    headers, loaded = done.stdout.strip().splitlines()
    assert headers == "[(b'x-request-id', b'abc-1'), (b'x-seen', b'abc-1')]"
    assert loaded == "False False"


def test_header_name_is_a_deprecated_alias() -> None:
    seen: list[str | None] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(current_correlation_id())

    with pytest.warns(DeprecationWarning, match="use correlation_header="):
        middleware = SagaContextMiddleware(app, header_name="X-Request-ID")
    assert middleware.correlation_header == middleware.header_name == "X-Request-ID"
    scope = {"type": "http", "headers": [(b"x-request-id", b"old-name-1")]}

    async def send(message: Any) -> None:
        return None

    asyncio.run(middleware(scope, None, send))  # type: ignore[arg-type]
    assert seen == ["old-name-1"]
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(ConfigurationError, match="header_name"),
    ):
        SagaContextMiddleware(app, header_name="bad header")


def test_fastapi_exports_the_same_class() -> None:
    from sagaz.integrations.fastapi import SagaContextMiddleware as FromFastAPI

    assert FromFastAPI is SagaContextMiddleware
