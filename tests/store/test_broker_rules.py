"""Topics, header names, header values and keys that a supported broker would refuse or
alter are refused by `outbox.add`, naming the broker rule, before anything is queued - on
PostgreSQL and SQLite; what every broker accepts is accepted."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from sagaz import outbox
from sagaz.errors import InvalidContextError
from sagaz.outbox.broker_rules import header_name_problem, header_value_problem, topic_problem
from sagaz.store.schema import outbox as outbox_table
from tests.store.test_hostile_input import assert_refused_before_queueing

EMPTY_TOKEN = "has an empty dot-separated token (a leading, trailing or doubled '.'), which NATS"
TOPIC_CHARACTERS = "topics are made of [A-Za-z0-9._-] (Kafka's legal topic characters"
HEADER_TOKEN = "a header name must be an HTTP token"


def adding(
    topic: object = "t", headers: dict[str, str] | None = None, key: str | None = None
) -> Callable[[Session], object]:
    """`outbox.add` of an event with `topic`, `headers` and `key`, through a session."""
    return lambda s: outbox.add(s, topic, {}, key=key, headers=headers)  # type: ignore[arg-type]


NATS_CANNOT_CARRY = "contains a control character, which NATS headers cannot carry"

#: (case id, what is added, the start of the error's message)
BROKER_CASES: list[tuple[str, Callable[[Session], object], str]] = [
    ("nats-empty-token", adding("a..b"), f"topic 'a..b' {EMPTY_TOKEN}"),
    ("nats-leading-dot", adding(".a"), EMPTY_TOKEN),
    ("nats-trailing-dot", adding("a."), EMPTY_TOKEN),
    ("kafka-dot", adding("."), EMPTY_TOKEN),
    ("space", adding("a b"), f"contains ' '; {TOPIC_CHARACTERS}"),
    ("nats-wildcard-star", adding("a.*"), "contains '*'"),
    ("nats-wildcard-tail", adding("a.>"), "contains '>'"),
    ("kafka-colon", adding("orders:created"), "contains ':'"),
    ("kafka-slash", adding("orders/created"), "contains '/'"),
    ("empty", adding(""), "topic '' is empty"),
    ("not-str", adding(b"t"), "topic must be a str, got bytes"),
    (
        "nats-header-colon",
        adding(headers={"x:colon": "v"}),
        f"'x:colon' contains ':'; {HEADER_TOKEN}",
    ),
    ("nats-header-space", adding(headers={"x y": "v"}), "header name 'x y' contains ' '"),
    ("header-empty-name", adding(headers={"": "v"}), "header name '' must be 1 to 128 characters"),
    (
        "sagaz-header",
        adding(headers={"Sagaz-Key": "k"}),
        "header name 'Sagaz-Key' starts with 'sagaz-', reserved for sagaz's own headers",
    ),
    ("jetstream-header", adding(headers={"Nats-Msg-Id": "1"}), "reserved for NATS JetStream's"),
    (
        "nats-header-value-trimmed",
        adding(headers={"h": " v"}),
        "header 'h' value has leading or trailing whitespace, which NATS headers trim",
    ),
    (
        "nats-header-value-newline",
        adding(headers={"h": "a\r\nb"}),
        f"'h' value {NATS_CANNOT_CARRY}",
    ),
    ("key-newline", adding(key="a\nb"), f"key {NATS_CANNOT_CARRY} (it travels as a header)"),
    ("key-trailing-space", adding(key="k "), "NATS headers trim"),
]


@pytest.mark.parametrize(
    ("call", "message"), [pytest.param(*case[1:], id=case[0]) for case in BROKER_CASES]
)
def test_what_a_broker_refuses_is_refused_at_the_call(
    sync_engine: sa.Engine, call: Callable[[Session], object], message: str
) -> None:
    assert_refused_before_queueing(sync_engine, call, InvalidContextError, message)


def test_what_every_broker_accepts_is_accepted_and_stored(sync_engine: sa.Engine) -> None:
    topic = "orders_v2.created-" + "x" * 231
    headers = {"X-Tenant": "acme corp", "!#$%&'*+-.^_`|~": "é 🎉", "h": ""}
    with Session(sync_engine) as session:
        event_id = outbox.add(session, topic, {}, key="a b", headers=headers)
        session.commit()
    with sync_engine.connect() as connection:
        row = connection.execute(sa.select(outbox_table).where(outbox_table.c.id == event_id)).one()
    assert (row.topic, row.key, row.headers) == (topic, "a b", headers)
    assert len(topic) == 249


@pytest.mark.parametrize("topic", ["a", "A.b-c_d.9", "x" * 249, "sagaz-x"])
def test_topic_rules_accept(topic: str) -> None:
    assert topic_problem(topic) is None


def test_rules_name_the_broker() -> None:
    assert re.search("Kafka", topic_problem("x" * 250) or "")
    assert re.search("NATS", header_name_problem("a:b") or "")
    assert re.search("NATS", header_value_problem("v\t") or "")
    assert header_value_problem("inner space") is None
