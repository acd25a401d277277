"""settings.SAGAZ: documented keys, defaults, a clear ImproperlyConfigured for bad
values; database URLs derived from DATABASES; Django stays an optional extra."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from sagaz import ConfigurationError
from sagaz.integrations.django.conf import (
    SagazSettings,
    database_from_url,
    database_url,
    get_settings,
    load_settings,
)
from tests.core.test_optional_imports import run_blocked
from tests.integrations.django.conftest import APPLICATION_NAME, SCHEMA

DATABASES = {"default": {}, "other": {}}


def test_defaults() -> None:
    loaded = load_settings(None, DATABASES)
    assert loaded == SagazSettings()
    assert (loaded.database, loaded.broker_url, loaded.autodiscover) == ("default", None, "sagas")
    config = loaded.saga_config(database_url="sqlite:///x.db")
    assert (config.lease_seconds, config.max_retries, config.database_url) == (
        30.0,
        0,
        "sqlite:///x.db",
    )


def test_every_key() -> None:
    loaded = load_settings(
        {
            "DATABASE": "other",
            "BROKER_URL": "redis://localhost:6379/0",
            "AUTODISCOVER": None,
            "IMPORTS": ["orders.sagas"],
            "LEASE_SECONDS": 5,
            "MAX_RETRIES": 3,
            "RETRY_BACKOFF": 0,
            "STEP_TIMEOUT_SECONDS": 2.5,
            "CORRELATION_HEADER": "X-Request-ID",
            "MAX_RETRY_BACKOFF": 4,
            "COMPENSATION_RETRIES": 1,
            "FAILURE_STRATEGY": "wait_all",
            "SAGA_TIMEOUT_SECONDS": 60,
            "LOG_TRANSITIONS": True,
            "METRICS": False,
            "TRACING": False,
            "SHUTDOWN_GRACE_SECONDS": 3,
        },
        DATABASES,
    )
    assert loaded.database == "other"
    config = loaded.saga_config()
    assert (config.broker_url, config.lease_seconds, config.max_retries) == (
        "redis://localhost:6379/0",
        5.0,
        3,
    )
    assert config.step_timeout_seconds == 2.5
    assert (config.max_retry_backoff, config.compensation_retries) == (4, 1)
    assert config.failure_strategy.value == "wait_all"
    assert (config.saga_timeout_seconds, config.log_transitions) == (60, True)
    assert (loaded.correlation_header, loaded.shutdown_grace_seconds) == ("X-Request-ID", 3.0)


def test_the_old_correlation_header_key_still_works_with_a_warning() -> None:
    with pytest.warns(DeprecationWarning, match=r"use settings.SAGAZ\['CORRELATION_HEADER'\]"):
        loaded = load_settings({"CORRELATION_ID_HEADER": "X-Request-ID"}, DATABASES)
    assert loaded.correlation_header == "X-Request-ID"
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(ConfigurationError, match="same setting"),
    ):
        load_settings({"CORRELATION_ID_HEADER": "X-A", "CORRELATION_HEADER": "X-B"}, DATABASES)


def test_settings_errors_are_configuration_errors_too() -> None:
    with pytest.raises(ConfigurationError, match=r"did you mean settings.SAGAZ\['MAX_RETRIES'\]"):
        load_settings({"MAX_RETRYS": 3}, DATABASES)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("nope", "settings.SAGAZ must be a dict"),
        ({"LEASE": 1}, "unknown sagaz setting(s): settings.SAGAZ['LEASE']"),
        ({"DATABASE_URL": "sqlite://"}, "unknown sagaz setting(s): settings.SAGAZ['DATABASE_URL']"),
        ({"max_retries": 1}, "settings.SAGAZ['max_retries'] (did you mean"),
        ({"DATABASE": "missing"}, "'missing', which is not in DATABASES"),
        ({"DATABASE": 3}, "'DATABASE'] must be the alias"),
        (
            {"BROKER_URL": "localhost"},
            "'BROKER_URL'] (SagaConfig.broker_url) must look like scheme://",
        ),
        ({"AUTODISCOVER": "not a module"}, "'AUTODISCOVER'] must be a module name"),
        ({"IMPORTS": "orders.sagas"}, "'IMPORTS'] must be a list of module names"),
        ({"LEASE_SECONDS": 0}, "'LEASE_SECONDS'] (SagaConfig.lease_seconds) must be > 0, got 0"),
        ({"LEASE_SECONDS": "thirty"}, "'LEASE_SECONDS'] must be a number"),
        ({"MAX_RETRIES": -1}, "'MAX_RETRIES'] (SagaConfig.max_retries) must be >= 0"),
        ({"MAX_RETRIES": True}, "'MAX_RETRIES'] (SagaConfig.max_retries) must be >= 0"),
        ({"RETRY_BACKOFF": -1}, "'RETRY_BACKOFF'] (SagaConfig.retry_backoff) must be >= 0"),
        ({"STEP_TIMEOUT_SECONDS": 0}, "'STEP_TIMEOUT_SECONDS'] (SagaConfig.step_timeout_seconds)"),
        ({"METRICS": "maybe"}, "'METRICS'] must be true or false"),
        ({"TRACING": 1}, "'TRACING'] must be true or false"),
        ({"FAILURE_STRATEGY": "eventually"}, "FAILURE_STRATEGY'] must be one of"),
        ({"SHUTDOWN_GRACE_SECONDS": -1}, "'SHUTDOWN_GRACE_SECONDS'] must be a number >= 0"),
        ({"CORRELATION_HEADER": "X Bad"}, "'CORRELATION_HEADER'] must be a header name"),
    ],
)
def test_bad_values_name_the_key(raw: Any, message: str) -> None:
    with pytest.raises(ImproperlyConfigured) as raised:
        load_settings(raw, DATABASES)
    assert message in str(raised.value)


def test_settings_are_reread_when_overridden() -> None:
    assert get_settings().lease_seconds == 2  # the test settings
    with override_settings(SAGAZ={"LEASE_SECONDS": 7}):
        assert get_settings().lease_seconds == 7
    assert get_settings().lease_seconds == 2


def test_a_missing_import_is_improperly_configured() -> None:
    from sagaz.integrations.django.conf import import_saga_modules

    with pytest.raises(ImproperlyConfigured, match="'no_such_module_here'"):
        import_saga_modules(load_settings({"IMPORTS": ["no_such_module_here"]}))


@pytest.mark.django_db(transaction=True, databases=["default", "sqlite"])
def test_database_urls_come_from_the_live_connection_settings() -> None:
    url = database_url("default")
    assert url.startswith("postgresql+psycopg://")
    assert f"search_path%3D{SCHEMA}" in url
    assert f"application_name={APPLICATION_NAME}" in url
    assert database_url("sqlite").startswith("sqlite:////")
    assert database_url() == url  # settings.SAGAZ["DATABASE"] defaults to "default"


def test_database_url_refusals() -> None:
    with pytest.raises(ImproperlyConfigured, match="in-memory SQLite"):
        database_url("memory")


def test_database_from_url_round_trips() -> None:
    entry = database_from_url(
        "postgresql+psycopg://app:secret@db.example:5433/shop?options=-csearch_path%3Dx"
    )
    assert entry == {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "shop",
        "USER": "app",
        "PASSWORD": "secret",
        "HOST": "db.example",
        "PORT": "5433",
        "OPTIONS": {"options": "-csearch_path=x"},
    }
    assert database_from_url("sqlite:////tmp/x.db") == {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": "/tmp/x.db",
    }
    with pytest.raises(ImproperlyConfigured, match="not mysql"):
        database_from_url("mysql://x/y")


def test_django_is_an_optional_extra() -> None:
    done = run_blocked(
        """
        import sagaz
        try:
            import sagaz.integrations.django
        except sagaz.MissingExtraError as error:
            print("refused:", error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'sagaz[django]'" in done.stdout


def test_run_saga_runs_with_every_setting_of_settings_sagaz(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import uuid

    from sagaz import SagaStatus
    from sagaz.integrations.django import run_saga
    from tests.integrations.settings_sagas import FlakySaga

    settings = {"MAX_RETRIES": 2, "RETRY_BACKOFF": 0, "LOG_TRANSITIONS": True}
    with override_settings(SAGAZ=settings), caplog.at_level("INFO", "sagaz.transitions"):
        result = run_saga(FlakySaga, {"key": uuid.uuid4().hex, "fail_times": 2})
    assert result.status is SagaStatus.COMPLETED
    assert any(record.name == "sagaz.transitions" for record in caplog.records)
    with override_settings(SAGAZ={"RETRY_BACKOFF": 0}):
        failed = run_saga(FlakySaga, {"key": uuid.uuid4().hex, "fail_times": 1})
    assert failed.status is SagaStatus.COMPENSATED
