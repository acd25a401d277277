"""The one settings model: `SagaConfig.from_mapping` and `sagaz.settings.read_settings`,
through which every adapter reads its settings."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from sagaz import ConfigurationError, ParallelFailureStrategy, SagaConfig
from sagaz.settings import read_settings


def test_every_field_under_its_upper_case_name_and_other_keys_ignored() -> None:
    config = SagaConfig.from_mapping(
        {
            "SAGAZ_DATABASE_URL": sa.make_url("postgresql+psycopg://app:pw@db/app"),
            "SAGAZ_BROKER_URL": "redis://localhost:6379/0",
            "SAGAZ_MAX_RETRIES": 3,
            "SAGAZ_RETRY_BACKOFF": "0.25",  # strings are converted as variables are
            "SAGAZ_MAX_RETRY_BACKOFF": 4,
            "SAGAZ_STEP_TIMEOUT_SECONDS": "2.5",
            "SAGAZ_COMPENSATION_RETRIES": "1",
            "SAGAZ_FAILURE_STRATEGY": "wait_all",
            "SAGAZ_SAGA_TIMEOUT_SECONDS": 60,
            "SAGAZ_LEASE_SECONDS": 5,
            "SAGAZ_LOG_TRANSITIONS": "yes",
            "SAGAZ_METRICS": False,
            "SAGAZ_TRACING": "off",
            "SECRET_KEY": "not sagaz's",
        }
    )
    assert config.database_url == "postgresql+psycopg://app:pw@db/app"
    assert (config.max_retries, config.retry_backoff, config.max_retry_backoff) == (3, 0.25, 4)
    assert (config.step_timeout_seconds, config.saga_timeout_seconds) == (2.5, 60)
    assert config.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    assert (config.compensation_retries, config.lease_seconds) == (1, 5)
    assert (config.log_transitions, config.metrics, config.tracing) == (True, False, False)


def test_keywords_take_precedence_and_empty_strings_leave_the_default() -> None:
    config = SagaConfig.from_mapping(
        {"MAX_RETRIES": 1, "DATABASE_URL": ""}, prefix="", max_retries=4
    )
    assert (config.max_retries, config.database_url) == (4, None)


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"SAGAZ_MAX_RETRYS": 1}, r"RETRYS'\] \(did you mean conf\['SAGAZ_MAX_RETRIES'\]\?\)"),
        (
            {"SAGAZ_max_retries": 1},
            r"max_retries'\] \(did you mean conf\['SAGAZ_MAX_RETRIES'\]\?\)",
        ),
        ({"SAGAZ_EXTRA_LISTENERS": ()}, "unknown sagaz setting"),
        ({"SAGAZ_MAX_RETRIES": "many"}, "S'] must be an integer"),
        ({"SAGAZ_MAX_RETRIES": -1}, r"S'\] \(SagaConfig.max_retries\) must be >= 0"),
        ({"SAGAZ_METRICS": 1}, r"S'\] must be true or false"),
        ({"SAGAZ_BROKER_URL": "localhost"}, r"L'\] \(SagaConfig.broker_url\) must look like"),
    ],
)
def test_bad_keys_and_values_are_named(mapping: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        SagaConfig.from_mapping(mapping, where=lambda key: f"conf[{key!r}]")


def test_aliases_warn_and_a_setting_given_twice_is_refused() -> None:
    with pytest.warns(DeprecationWarning, match="OLD_HEADER'] is deprecated: use .*'HEADER'"):
        found = read_settings(
            {"OLD_HEADER": "X-A"},
            prefix="",
            known={"header"},
            aliases={"old_header": "header"},
            where=lambda key: f"S[{key!r}]",
        )
    assert (found["header"].key, found["header"].value) == ("OLD_HEADER", "X-A")
    with (
        pytest.warns(DeprecationWarning, match="deprecated"),
        pytest.raises(ConfigurationError, match="same setting"),
    ):
        read_settings(
            {"HEADER": "X-A", "OLD_HEADER": "X-B"},
            prefix="",
            known={"header"},
            aliases={"old_header": "header"},
        )


def test_from_env_is_unchanged_by_unknown_variables() -> None:
    config = SagaConfig.from_env({"SAGAZ_MAX_RETRIES": "2", "SAGAZ_RELAY_LEASE_SECONDS": "5"})
    assert config.max_retries == 2
