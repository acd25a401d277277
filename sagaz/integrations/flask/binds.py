"""Binds: sagaz's rows in ``db.session`` go to the app's sagaz bind, and a unit of work
that would also write application rows on another bind - two transactions - is refused
with `CrossBindError` before anything commits."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import chain
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, SessionTransaction

from sagaz.errors import ConfigurationError, CrossBindError
from sagaz.integrations.flask.state import AppState, current_app_object, state_of
from sagaz.store.unit_of_work import BIND_ARGUMENTS_KEY

__all__ = ["bind_engine", "hook_session_factory", "url_of"]

_WRITTEN_BINDS_KEY = "sagaz.flask.written_binds"


def bind_engine(app: Flask, db: SQLAlchemy, bind_key: str | None) -> sa.Engine:
    with app.app_context():
        engines = db.engines
    if bind_key not in engines:
        known = ", ".join(repr(key) for key in engines)
        raise ConfigurationError(
            f"SAGAZ_BIND_KEY {bind_key!r} is not a bind of the app's db (binds: {known})"
        )
    return engines[bind_key]


def url_of(engine: sa.Engine, bind_key: str | None) -> str:
    url = engine.url
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        raise ConfigurationError(
            f"bind {bind_key!r} is an in-memory SQLite database, which sagaz's own engine "
            "cannot share: use a file, or set SAGAZ_DATABASE_URL (None: sagas run in "
            "memory only)"
        )
    return url.render_as_string(hide_password=False)


def hook_session_factory(db: SQLAlchemy) -> None:
    """Every ``db.session`` chooses the connection for sagaz's rows with `_choose_bind`
    (unless the application set its own ``sagaz.bind_arguments``)."""
    factory = db.session.session_factory
    info = dict(factory.kw.get("info") or {})
    if BIND_ARGUMENTS_KEY not in info:
        info[BIND_ARGUMENTS_KEY] = _choose_bind
        factory.configure(info=info)


def _binds_of(session: Session) -> tuple[AppState, Mapping[str | None, sa.Engine]] | None:
    """The current app's sagaz state and its db's engines, when `session` is one of the
    extension's ``db.session`` sessions in an app context; else None."""
    if session.info.get(BIND_ARGUMENTS_KEY) is not _choose_bind:
        return None
    app = current_app_object()
    state = state_of(app) if app is not None else None
    if state is None or state.db is None:
        return None
    return state, state.db.engines


def _choose_bind(session: Session) -> Mapping[str, Any]:
    """Bind arguments for sagaz's rows in `session`: the sagaz bind of the current app,
    refused (CrossBindError) when the unit of work writes application rows elsewhere."""
    found = _binds_of(session)
    if found is None:
        return {}
    state, engines = found
    target = engines[state.bind_key]
    if len(engines) == 1:
        return {"bind": target}
    stray = [bind for bind in _written_binds(session) if bind is not target]
    if stray:
        names = {id(engine): key for key, engine in engines.items()}
        others = ", ".join(sorted({_bind_name(names.get(id(bind))) for bind in stray}))
        raise CrossBindError(
            f"sagaz's rows go to bind {_bind_name(state.bind_key)} (SAGAZ_BIND_KEY) but "
            f"this unit of work also writes application rows on bind {others}: they "
            "would commit in different transactions. Write them in separate units of "
            "work, or keep the models that travel with sagas on the sagaz bind."
        )
    return {"bind": target}


def _bind_name(key: str | None) -> str:
    return "None (the default bind)" if key is None else repr(key)


def _written_binds(session: Session) -> set[Any]:
    """Binds of application rows written in the session's transaction: those flushed
    or executed earlier (recorded) and those pending now."""
    binds: set[Any] = set(session.info.get(_WRITTEN_BINDS_KEY, ()))
    binds.update(_pending_binds(session))
    return binds


def _pending_binds(session: Session) -> set[Any]:
    dirty = (obj for obj in session.dirty if session.is_modified(obj))
    mappers = {sa.inspect(obj).mapper for obj in chain(session.new, session.deleted, dirty)}
    return {session.get_bind(mapper=mapper) for mapper in mappers}


def _recording(session: Session) -> bool:
    """Record written binds only where there is more than one to tell apart."""
    found = _binds_of(session)
    return found is not None and len(found[1]) > 1


def _record_flushed_binds(session: Session, _flush_context: Any) -> None:
    if _recording(session):
        # after_flush still shows the pre-flush new/dirty/deleted collections
        binds = _pending_binds(session)
        if binds:
            session.info.setdefault(_WRITTEN_BINDS_KEY, set()).update(binds)


def _record_executed_binds(state: ORMExecuteState) -> None:
    if (state.is_insert or state.is_update or state.is_delete) and _recording(state.session):
        bind = state.session.get_bind(**state.bind_arguments)
        state.session.info.setdefault(_WRITTEN_BINDS_KEY, set()).add(bind)


def _forget_binds(session: Session, transaction: SessionTransaction) -> None:
    if transaction.parent is None:
        session.info.pop(_WRITTEN_BINDS_KEY, None)


# Registered once, on the sync Session class; each returns at once for a session whose
# factory the extension did not hook.
event.listen(Session, "after_flush", _record_flushed_binds)
event.listen(Session, "do_orm_execute", _record_executed_binds)
event.listen(Session, "after_transaction_end", _forget_binds)
