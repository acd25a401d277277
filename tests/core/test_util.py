"""sagaz._util: the helpers every part of sagaz shares."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC

import pytest

from sagaz._util import (
    backoff,
    describe,
    parse_bool,
    random_uuid,
    redact_database_url,
    redact_url,
    requires_extra,
    scrub_passwords,
    utcnow,
)
from sagaz.errors import MissingExtraError


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        (ValueError("bad amount"), "ValueError: bad amount"),
        (RuntimeError(), "RuntimeError"),
        (ValueError("nul \x00 here"), "ValueError: nul \\x00 here"),
        (ValueError("lone \ud800 surrogate"), "ValueError: lone \\ud800 surrogate"),
        (ValueError("caf\u00e9"), "ValueError: caf\u00e9"),
    ],
)
def test_describe_is_one_storable_line(error: BaseException, shown: str) -> None:
    text = describe(error)
    assert text == shown
    text.encode("utf-8")  # storable: no lone surrogate left
    assert "\x00" not in text


def test_backoff_has_equal_jitter_within_its_ceiling() -> None:
    for attempts, ceiling in [(1, 0.5), (2, 1.0), (3, 2.0), (7, 10.0), (10_000, 10.0)]:
        delays = {backoff(attempts, 0.5, 10.0) for _ in range(50)}
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays), (attempts, delays)
        assert len(delays) > 1


@pytest.mark.parametrize(("raw", "value"), [("1", True), (" YES ", True), ("On", True)])
def test_parse_bool_true(raw: str, value: bool) -> None:
    assert parse_bool(raw) is value


@pytest.mark.parametrize("raw", ["0", "false", "No", "off"])
def test_parse_bool_false(raw: str) -> None:
    assert parse_bool(raw) is False


@pytest.mark.parametrize("raw", ["", "maybe", "2", "truthy"])
def test_parse_bool_refuses_anything_else(raw: str) -> None:
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool(raw)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://app:s3cret@db:5432/app", "postgresql+psycopg://app:***@db:5432/app"),
        ("postgresql://app@db/app?password=s3cret", "postgresql://app@db/app?password=%2A%2A%2A"),
        ("sqlite:///tmp/x.db", "sqlite:///tmp/x.db"),
        ("not a url app:s3cret@host", "not a url app:***@host"),
    ],
)
def test_database_urls_hide_passwords(url: str, shown: str) -> None:
    assert redact_database_url(url) == shown


def test_broker_urls_hide_passwords_and_the_query_string() -> None:
    assert redact_url("amqp://u:s3cret@h/vhost?token=s3cret") == "amqp://u:***@h/vhost"
    assert "s3cret" not in scrub_passwords("cannot reach redis://:s3cret@h:6379/0 now")


def test_utcnow_is_timezone_aware() -> None:
    assert utcnow().tzinfo is UTC


def test_requires_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sagaz_no_such_client", None)  # import raises
    with (
        pytest.raises(MissingExtraError, match=r"pip install 'sagaz\[demo\]'") as caught,
        requires_extra("demo", "demo-client", "The demo broker"),
    ):
        import sagaz_no_such_client  # type: ignore[import-not-found]  # noqa: F401
    assert caught.value.extra == "demo"
    assert "The demo broker needs the 'demo-client' package" in str(caught.value)


def test_random_uuid_is_a_canonical_version_4_uuid() -> None:
    ids = [random_uuid() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert str(parsed) == text
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
    # every variant digit shows up: the two random bits under the variant are kept
    assert {text[19] for text in ids} == set("89ab")
