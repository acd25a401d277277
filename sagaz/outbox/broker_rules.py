"""What every broker sagaz publishes to accepts, checked when an event is added.

An event the relay could not publish would be retried and then dead-lettered long after
the request that added it returned; `outbox.add` refuses it instead, with the rule of the
broker that would have refused (or altered) it. The rules are those of every supported
broker at once, so an application can change brokers without its events changing:

* topic (Redis stream, RabbitMQ routing key, NATS subject, Kafka topic): 1 to 249
  characters of ``[A-Za-z0-9._-]`` (Kafka's legal topic characters and length; this
  also keeps RabbitMQ's 255-byte routing key and NATS's no-whitespace, no-wildcard
  subjects), and no empty dot-separated token - ``.a``, ``a.`` and ``a..b`` are NATS
  subjects with an empty token (and ``.``/``..`` topics Kafka refuses);
* header name: a non-empty HTTP token (NATS writes ``Name: value`` lines; ``:`` or a
  space would end or break the name) of at most 128 characters, not starting with
  ``sagaz-`` (sagaz's own headers: message id, key, saga id) or ``Nats-`` (headers that
  steer JetStream, such as ``Nats-Msg-Id``), in any case;
* header value, and the event key (which travels as the ``sagaz-key`` header): no
  control characters (NATS replaces CR and LF) and no leading or trailing whitespace
  (NATS trims it), so it arrives as it was added.

Redis Streams and Kafka headers accept any name and value; RabbitMQ's are at most 255
bytes: all within the rules above.
"""

from __future__ import annotations

import re

#: Kafka's longest topic name.
MAX_TOPIC_LENGTH = 249
MAX_HEADER_NAME_LENGTH = 128

_TOPIC_CHARACTERS = re.compile(r"[A-Za-z0-9._-]+")
#: RFC 7230 token characters: what NATS (nats-py) accepts as a header name.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
#: Header name prefixes that mean something to sagaz or to a broker.
RESERVED_HEADER_PREFIXES = ("sagaz-", "nats-")


def topic_problem(topic: str) -> str | None:
    """Why a broker would refuse `topic`, naming the broker rule; None when all accept it."""
    if not topic:
        return "is empty"
    if len(topic) > MAX_TOPIC_LENGTH:
        return f"is {len(topic)} characters long; Kafka topics have at most {MAX_TOPIC_LENGTH}"
    bad = _first_outside(_TOPIC_CHARACTERS, topic)
    if bad is not None:
        return (
            f"contains {bad!r}; topics are made of [A-Za-z0-9._-] (Kafka's legal topic "
            "characters; NATS subjects also refuse whitespace and the wildcards * and >)"
        )
    if "" in topic.split("."):
        return (
            "has an empty dot-separated token (a leading, trailing or doubled '.'), "
            "which NATS refuses in a subject"
        )
    return None


def header_name_problem(name: str) -> str | None:
    """Why a broker would refuse (or sagaz overwrite) header `name`; None when none would."""
    if not name or len(name) > MAX_HEADER_NAME_LENGTH:
        return f"must be 1 to {MAX_HEADER_NAME_LENGTH} characters"
    bad = _first_outside(_HEADER_NAME, name)
    if bad is not None:
        return (
            f"contains {bad!r}; a header name must be an HTTP token (letters, digits and "
            "!#$%&'*+-.^_`|~), as NATS requires (a header line is 'Name: value')"
        )
    lowered = name.lower()
    for prefix in RESERVED_HEADER_PREFIXES:
        if lowered.startswith(prefix):
            owner = "sagaz's own headers" if prefix == "sagaz-" else "NATS JetStream's"
            return f"starts with {prefix!r}, reserved for {owner}"
    return None


def _first_outside(allowed: re.Pattern[str], text: str) -> str | None:
    """The first character of `text` that `allowed` does not match, or None."""
    if allowed.fullmatch(text):
        return None
    return next(c for c in text if not allowed.fullmatch(c))


def header_value_problem(value: str) -> str | None:
    """Why a broker would refuse or alter header value `value` (also the event key, sent
    as a header); None when it arrives unchanged everywhere."""
    if _CONTROL.search(value):
        return "contains a control character, which NATS headers cannot carry"
    if value != value.strip():
        return "has leading or trailing whitespace, which NATS headers trim"
    return None
