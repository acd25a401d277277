"""The request hooks: sagaz's tables checked before the first request, the request's
correlation id (``g.sagaz_context``), echoed in the response, and the rollback of what a
request that raised left in ``db.session``."""

from __future__ import annotations

import logging

from flask import Flask, Response, g, request

from sagaz.context import RequestContext, SagaContextManager
from sagaz.integrations._core.commit import finish_session_sync
from sagaz.integrations._core.correlation import correlation_id_from
from sagaz.integrations.flask.binds import bind_engine
from sagaz.integrations.flask.state import current_app_object, current_state
from sagaz.store.schema_check import check_schema

__all__ = ["register_hooks"]

log = logging.getLogger("sagaz.integrations.flask")
_TOKEN_KEY = "_sagaz_context_token"


def register_hooks(app: Flask) -> None:
    """Register the hooks through Flask's public API. Hooks the application registers
    after `init_app` see the correlation id (Flask runs ``before_request`` functions in
    the order they were registered, teardown functions in reverse)."""
    app.before_request(_check_schema_once)
    app.before_request(_open_request_context)
    app.after_request(_echo_correlation_id)
    app.teardown_request(_close_request_context)


def _check_schema_once() -> None:
    """Before the app's first request, and each one until it passes: sagaz's tables at
    this sagaz's revision (`sagaz.store.schema_check`), or `SchemaNotReadyError`."""
    state = current_state()
    if not state.schema_checked and state.config.database_url:
        db, url = state.db, state.config.database_url
        app = current_app_object()
        assert app is not None  # a request hook runs inside its app
        check_schema(url if db is None else bind_engine(app, db, state.bind_key))
    state.schema_checked = True


def _open_request_context() -> None:
    """Make the request's correlation id current (``g.sagaz_context``)."""
    header = current_state().correlation_header
    correlation_id = correlation_id_from(request.headers.get(header))
    setattr(g, _TOKEN_KEY, SagaContextManager.set(correlation_id))
    g.sagaz_context = SagaContextManager.get()


def _echo_correlation_id(response: Response) -> Response:
    context: RequestContext | None = g.get("sagaz_context")
    header = current_state().correlation_header
    if context is not None and header not in response.headers:
        response.headers[header] = context.correlation_id
    return response


def _close_request_context(error: BaseException | None) -> None:
    """Roll back what a request that raised left in ``db.session`` (the commit/rollback
    policy of `finish_session_sync`; Flask-SQLAlchemy also removes the session when the
    app context ends), then restore the previous correlation id."""
    try:
        db = current_state().db
        if error is not None and db is not None and db.session.registry.has():
            finish_session_sync(db.session(), error)
    finally:
        token = g.pop(_TOKEN_KEY, None)
        if token is not None:
            try:
                SagaContextManager.reset(token)
            except ValueError:  # set in another context (e.g. a copied one): let it go
                log.debug("sagaz: request context was set in another context", exc_info=True)
