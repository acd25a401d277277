"""`SagaContextMiddleware`: the request's correlation id, for sagas and outbox events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponseBase

from sagaz.context import SagaContextManager
from sagaz.integrations._core.correlation import correlation_id_from
from sagaz.integrations.django.checks import check_schema_at_startup
from sagaz.integrations.django.conf import get_settings

__all__ = ["SagaContextMiddleware"]


class SagaContextMiddleware:
    """Gives each request a correlation id (sync and async capable).

    The id comes from the ``X-Correlation-ID`` request header (or
    ``settings.SAGAZ["CORRELATION_HEADER"]``) when it is at most 128 characters of
    ``[A-Za-z0-9._:-]``; anything else - missing, too long, CR/LF, non-ASCII - is
    replaced by a fresh id and never reflected. Sagas started and outbox events added
    while the view runs record it (the `correlation-id` outbox header); it is available
    as ``request.correlation_id`` and echoed in the response header (unless the view set
    that header itself).

    Built once, when the web server starts: it then checks that sagaz's tables are at the
    revision this sagaz ships, and raises `sagaz.SchemaNotReadyError` ("run `python
    manage.py migrate`") otherwise (see `sagaz.integrations.django.checks`).
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        check_schema_at_startup()
        self.get_response = get_response
        self.header = get_settings().correlation_header
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self._acall(request)
        correlation_id = self._begin(request)
        with SagaContextManager.scope(correlation_id):
            response = self.get_response(request)
        return self._finish(response, correlation_id)

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        correlation_id = self._begin(request)
        get_response: Callable[[HttpRequest], Awaitable[HttpResponseBase]] = self.get_response
        with SagaContextManager.scope(correlation_id):
            response = await get_response(request)
        return self._finish(response, correlation_id)

    def _begin(self, request: HttpRequest) -> str:
        correlation_id = correlation_id_from(request.headers.get(self.header))
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        return correlation_id

    def _finish(self, response: HttpResponseBase, correlation_id: str) -> HttpResponseBase:
        if not response.has_header(self.header):
            response[self.header] = correlation_id
        return response
