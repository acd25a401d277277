"""Property tests of the input edge (hypothesis): generated contexts, payloads, keys,
headers and topics - well-formed ones and hostile ones (NaN, NUL, lone surrogates,
600-digit integers, -0.0, 1e16, None, non-dict mappings, ':' in header names, NATS
subjects with empty tokens, ...) - are, each one, either refused with a sagaz error
before anything is queued (the session's other work still commits), or stored and read
back exactly, and published exactly through the relay and the in-memory broker. Values
drawn only from what the rules accept must never be refused. The named values are also
tried as explicit examples on every run (random draws may miss them): those JSON or a
broker cannot take must be refused, the others must round-trip. PostgreSQL and SQLite."""

from __future__ import annotations

import asyncio
from collections import UserDict
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from sagaz import Saga, action, outbox, start_saga
from sagaz.errors import SagazError
from sagaz.outbox.brokers.common import decode_payload, encode_payload
from sagaz.outbox.brokers.memory import InMemoryBroker
from sagaz.outbox.relay import OutboxRelay
from sagaz.store.schema import outbox as outbox_table
from sagaz.store.schema import sagas
from sagaz.store.unit_of_work import pending_rows
from tests.conftest import DatabaseUrls
from tests.store.exact import as_stored, same
from tests.store.test_exact_json import NUMBERS, Levels

PROPERTIES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# -- documents -----------------------------------------------------------------------

#: Any text JSON can store: every character but NUL and lone surrogates.
SAFE_TEXT = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")

good_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**600) + 1, max_value=10**600 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from(NUMBERS)
    | st.just(Levels.HIGH)
    | st.text(SAFE_TEXT, max_size=12)
)
bad_scalars = st.sampled_from(
    [float("nan"), float("inf"), "nul\x00", "\ud800", 10**600, b"bytes", {1, 2}, 1j]
)


def documents(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(SAFE_TEXT, max_size=6)

    def containers(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        objects = st.dictionaries(keys, children, max_size=4)
        return (
            st.lists(children, max_size=4)
            | st.lists(children, max_size=3).map(tuple)
            | objects
            | objects.map(MappingProxyType)
            | objects.map(UserDict)
        )

    return st.recursive(scalars, containers, max_leaves=12)


good_documents = documents(good_scalars)
any_documents = documents(good_scalars | bad_scalars) | st.dictionaries(
    st.integers(), good_scalars, min_size=1, max_size=2
)

# -- topics, keys, headers -------------------------------------------------------------

TOKEN = st.text("abcXYZ019_-", min_size=1, max_size=8)
good_topics = st.lists(TOKEN, min_size=1, max_size=4).map(".".join)
any_topics = good_topics | st.text("ab.:/ *>\x00\t-_é", max_size=12)
good_keys = st.none() | st.text(max_size=20).map(str.strip).filter(lambda k: k.isprintable())
any_keys = good_keys | st.text(max_size=6)
HEADER_NAME = st.text("abcXYZ019-_.!#$%&'*+^`|~", min_size=1, max_size=10).filter(
    lambda n: not n.lower().startswith(("sagaz-", "nats-", "correlation-id"))
)
good_values = st.text(max_size=12).map(str.strip).filter(lambda v: v.isprintable())
good_headers = st.dictionaries(HEADER_NAME, good_values, max_size=4)
any_headers = good_headers | st.dictionaries(
    st.text("ab:; \r\n-", max_size=5) | st.sampled_from(["sagaz-key", "Nats-Msg-Id"]),
    st.text(max_size=5),
    max_size=3,
)


#: A case is (value, rule): True - it must be accepted; False - either outcome may do;
#: None - it must be refused (the named values below that a broker or JSON refuses).
Case = tuple[Any, bool | None]


def cases(good: st.SearchStrategy[Any], anything: st.SearchStrategy[Any]) -> Any:
    """(value, must_be_accepted): drawn from the accepted values, or from anything."""
    return good.map(lambda v: (v, True)) | anything.map(lambda v: (v, False))


# -- the values the issue named, tried on every run (the draws above may miss them) --------

#: Payloads binary JSON or NUMERIC affinity changed, None and non-dict mappings: accepted.
NAMED_PAYLOADS: list[Any] = [
    *NUMBERS,
    None,
    MappingProxyType({"a": UserDict({"b": -0.0})}),
    [UserDict({"n": 1e16}), (2**64, 10**599)],
]
#: (topic, payload, key, headers) of events a broker or the database would refuse.
NAMED_REFUSALS: list[tuple[Any, Any, Any, Any]] = [
    ("a..b", {}, None, {}),  # a NATS subject with an empty token
    ("t", {}, None, {"a:b": "v"}),  # ':' in a header name
    ("t", float("nan"), None, {}),
    ("t", {"k": "nul\x00"}, None, {}),
    ("t", {}, "lone \ud800", {}),
]


def with_examples(*examples: dict[str, Any]) -> Any:
    """Apply `hypothesis.example` once per keyword mapping in `examples`."""

    def apply(test: Any) -> Any:
        for arguments in examples:
            test = example(**arguments)(test)
        return test

    return apply


NAMED_EVENTS = [
    {"topic": ("a.b", True), "payload": (p, True), "key": (None, True), "headers": ({}, True)}
    for p in NAMED_PAYLOADS
] + [
    {"topic": (t, None), "payload": (p, None), "key": (k, None), "headers": (h, None)}
    for t, p, k, h in NAMED_REFUSALS
]
NAMED_CONTEXTS = [
    {"context": ({"named": NAMED_PAYLOADS}, True), "idempotency_key": (None, True)},
    {"context": (MappingProxyType({"n": -0.0}), True), "idempotency_key": ("k", True)},
    {"context": (None, None), "idempotency_key": (None, True)},
    {"context": ({"n": float("inf")}, None), "idempotency_key": (None, True)},
    {"context": ({}, True), "idempotency_key": ("nul\x00", None)},
]


class PropertySaga(Saga):
    saga_name = "input-properties"

    @action("only")
    async def only(self, ctx: Any) -> None:
        return None


@pytest.fixture
def engine(sync_engine: sa.Engine) -> sa.Engine:
    with sync_engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE app_rows (id INTEGER PRIMARY KEY)"))
    return sync_engine


def app_rows(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return connection.scalar(sa.text("SELECT count(*) FROM app_rows")) or 0


def add_app_row(session: Session) -> None:
    session.execute(sa.text("INSERT INTO app_rows (id) VALUES (:id)"), {"id": app_row_ids()})


_next_id = iter(range(1, 10**9))


def app_row_ids() -> int:
    return next(_next_id)


def refused_before_queueing(
    session: Session, engine: sa.Engine, error: SagazError, must_accept: bool, before: int
) -> None:
    """After a refusal: the value was not one the rules accept, the error says something,
    nothing of sagaz's was queued, and the application's row (`before` committed rows
    before it) commits."""
    assert not must_accept, f"refused a valid value: {error}"
    assert str(error)
    event("refused")
    assert pending_rows(session, sagas) == []
    assert pending_rows(session, outbox_table) == []
    session.commit()
    assert app_rows(engine) == before + 1


async def relay_once(urls: DatabaseUrls) -> list[Any]:
    async_engine = urls.async_engine(poolclass=sa.NullPool)
    broker = InMemoryBroker()
    try:
        await OutboxRelay(async_engine, broker, listen=False).relay_once()
    finally:
        await async_engine.dispose()
    return broker.published


@PROPERTIES
@with_examples(*NAMED_EVENTS)
@given(
    topic=cases(good_topics, any_topics),
    payload=cases(good_documents, any_documents),
    key=cases(good_keys, any_keys),
    headers=cases(good_headers, any_headers),
)
def test_an_event_is_refused_at_the_call_or_published_exactly(
    engine: sa.Engine,
    db: DatabaseUrls,
    topic: Case,
    payload: Case,
    key: Case,
    headers: Case,
) -> None:
    must_accept = all(case[1] for case in (topic, payload, key, headers))
    must_refuse = any(case[1] is None for case in (topic, payload, key, headers))
    before = app_rows(engine)
    with Session(engine) as session:
        add_app_row(session)
        try:
            event_id = outbox.add(session, topic[0], payload[0], key=key[0], headers=headers[0])
        except SagazError as error:
            refused_before_queueing(session, engine, error, must_accept, before)
            return
        assert not must_refuse, "accepted a value that must be refused"
        session.commit()
    expected = as_stored(payload[0])
    with engine.connect() as connection:
        row = connection.execute(sa.select(outbox_table).where(outbox_table.c.id == event_id)).one()
    assert (row.topic, row.key, row.headers) == (topic[0], key[0], dict(headers[0]))
    assert same(row.payload, expected)
    [message] = asyncio.run(relay_once(db))
    assert (message.id, message.topic, message.key) == (event_id, topic[0], key[0])
    assert message.headers == dict(headers[0])
    assert same(message.payload, expected)
    assert same(decode_payload(encode_payload(message.payload), "wire"), expected)
    event("published")


@PROPERTIES
@with_examples(*NAMED_CONTEXTS)
@given(
    context=cases(
        st.dictionaries(st.text(SAFE_TEXT, max_size=6), good_documents, max_size=4), any_documents
    ),
    idempotency_key=cases(
        st.none() | st.text(SAFE_TEXT, min_size=1, max_size=30), st.text(max_size=5)
    ),
)
def test_a_saga_start_is_refused_at_the_call_or_stored_exactly(
    engine: sa.Engine, context: Case, idempotency_key: Case
) -> None:
    must_accept = bool(context[1] and idempotency_key[1])
    must_refuse = context[1] is None or idempotency_key[1] is None
    key = idempotency_key[0]
    if key:  # one saga per key: make each example's key its own
        key = f"{key}#{app_row_ids()}"
    before = app_rows(engine)
    with Session(engine) as session:
        add_app_row(session)
        try:
            saga_id = start_saga(session, PropertySaga, context[0], idempotency_key=key)
        except SagazError as error:
            refused_before_queueing(session, engine, error, must_accept, before)
            return
        assert not must_refuse, "accepted a value that must be refused"
        session.commit()
    with engine.connect() as connection:
        row = connection.execute(sa.select(sagas).where(sagas.c.id == saga_id)).one()
    assert same(row.context, as_stored(context[0]))
    assert row.idempotency_key == key
    event("stored")
