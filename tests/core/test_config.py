"""SagaConfig: values, SAGAZ_* environment variables, the global config, the lifecycle."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

import sagaz
import sagaz.config
from sagaz import ConfigurationError, MemoryJournal, ParallelFailureStrategy, SagaConfig
from sagaz.engine import RunOptions
from sagaz.observability import log_transition

ALL_VARIABLES = {
    "SAGAZ_DATABASE_URL": "postgresql+asyncpg://app@db/app",
    "SAGAZ_BROKER_URL": "redis://cache:6379/0",
    "SAGAZ_MAX_RETRIES": "4",
    "SAGAZ_RETRY_BACKOFF": "0.25",
    "SAGAZ_MAX_RETRY_BACKOFF": "12",
    "SAGAZ_STEP_TIMEOUT_SECONDS": "7.5",
    "SAGAZ_COMPENSATION_RETRIES": "6",
    "SAGAZ_FAILURE_STRATEGY": "wait_all",
    "SAGAZ_SAGA_TIMEOUT_SECONDS": "60",
    "SAGAZ_LEASE_SECONDS": "2.5",
    "SAGAZ_LOG_TRANSITIONS": "true",
    "SAGAZ_METRICS": "yes",
    "SAGAZ_TRACING": "on",
}


def test_defaults() -> None:
    config = SagaConfig()
    assert config.database_url is None
    assert config.broker_url == "memory://"
    assert config.max_retries == 0
    assert config.retry_backoff == 0.5
    assert config.max_retry_backoff == 30.0
    assert config.step_timeout_seconds is None
    assert config.compensation_retries == 3
    assert config.failure_strategy is ParallelFailureStrategy.FAIL_FAST
    assert config.saga_timeout_seconds is None
    assert config.lease_seconds == 30.0
    assert (config.log_transitions, config.metrics, config.tracing) == (False, False, False)
    assert config.extra_listeners == ()
    assert not config.initialized


def test_from_env_reads_every_setting() -> None:
    config = SagaConfig.from_env(ALL_VARIABLES)
    assert config.database_url == "postgresql+asyncpg://app@db/app"
    assert config.broker_url == "redis://cache:6379/0"
    assert config.max_retries == 4
    assert config.retry_backoff == 0.25
    assert config.max_retry_backoff == 12.0
    assert config.step_timeout_seconds == 7.5
    assert config.compensation_retries == 6
    assert config.failure_strategy is ParallelFailureStrategy.WAIT_ALL
    assert config.saga_timeout_seconds == 60.0
    assert config.lease_seconds == 2.5
    assert (config.log_transitions, config.metrics, config.tracing) == (True, True, True)


def test_every_init_setting_has_a_variable() -> None:
    settable = {f.name for f in dataclasses.fields(SagaConfig) if f.init}
    from_variables = {name.removeprefix("SAGAZ_").lower() for name in ALL_VARIABLES}
    assert settable - from_variables == {"extra_listeners"}


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAGAZ_MAX_RETRIES", "2")
    monkeypatch.setenv("SAGAZ_FAILURE_STRATEGY", "FAIL_FAST_WITH_GRACE")
    config = SagaConfig.from_env()
    assert config.max_retries == 2
    assert config.failure_strategy is ParallelFailureStrategy.FAIL_FAST_WITH_GRACE


def test_from_env_ignores_unset_and_empty_variables() -> None:
    config = SagaConfig.from_env({"SAGAZ_MAX_RETRIES": "", "UNRELATED": "x"})
    assert config == SagaConfig()


def test_keyword_overrides_win_over_the_environment() -> None:
    config = SagaConfig.from_env({"SAGAZ_MAX_RETRIES": "4"}, max_retries=1, lease_seconds=3.0)
    assert config.max_retries == 1
    assert config.lease_seconds == 3.0


@pytest.mark.parametrize(("raw", "expected"), [("1", True), ("No", False), ("OFF", False)])
def test_boolean_spellings(raw: str, expected: bool) -> None:
    assert SagaConfig.from_env({"SAGAZ_METRICS": raw}).metrics is expected


@pytest.mark.parametrize(
    ("variable", "raw", "fragment"),
    [
        ("SAGAZ_MAX_RETRIES", "three", "must be an integer"),
        ("SAGAZ_MAX_RETRIES", "1.5", "must be an integer"),
        ("SAGAZ_COMPENSATION_RETRIES", "x", "must be an integer"),
        ("SAGAZ_RETRY_BACKOFF", "fast", "must be a number"),
        ("SAGAZ_MAX_RETRY_BACKOFF", "?", "must be a number"),
        ("SAGAZ_STEP_TIMEOUT_SECONDS", "10s", "must be a number"),
        ("SAGAZ_SAGA_TIMEOUT_SECONDS", "soon", "must be a number"),
        ("SAGAZ_LEASE_SECONDS", "long", "must be a number"),
        ("SAGAZ_LOG_TRANSITIONS", "maybe", "must be true or false"),
        ("SAGAZ_TRACING", "2", "must be true or false"),
        ("SAGAZ_FAILURE_STRATEGY", "sometimes", "must be one of fail_fast"),
    ],
)
def test_bad_variable_values_name_the_variable(variable: str, raw: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SagaConfig.from_env({variable: raw})
    assert str(caught.value).startswith(variable)
    assert fragment in str(caught.value)
    assert repr(raw) in str(caught.value)


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("SAGAZ_MAX_RETRIES", "-1"),
        ("SAGAZ_RETRY_BACKOFF", "-0.5"),
        ("SAGAZ_STEP_TIMEOUT_SECONDS", "0"),
        ("SAGAZ_LEASE_SECONDS", "-3"),
    ],
)
def test_out_of_range_variable_values_are_refused(variable: str, raw: str) -> None:
    setting = variable.removeprefix("SAGAZ_").lower()
    with pytest.raises(ConfigurationError, match=setting) as caught:
        SagaConfig.from_env({variable: raw})
    assert variable in str(caught.value)


def test_unknown_keyword_settings_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="max_retrys"):
        SagaConfig.from_env({}, max_retrys=3)


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"max_retries": -1}, "SagaConfig.max_retries must be >= 0, got -1"),
        ({"max_retries": 1.5}, "SagaConfig.max_retries must be >= 0"),
        ({"max_retries": True}, "SagaConfig.max_retries must be >= 0"),
        ({"compensation_retries": -1}, "SagaConfig.compensation_retries"),
        ({"retry_backoff": -1}, "SagaConfig.retry_backoff must be >= 0"),
        ({"retry_backoff": "0.5"}, "SagaConfig.retry_backoff must be >= 0"),
        ({"max_retry_backoff": float("nan")}, "SagaConfig.max_retry_backoff"),
        ({"step_timeout_seconds": 0}, "SagaConfig.step_timeout_seconds must be > 0"),
        ({"saga_timeout_seconds": -5}, "SagaConfig.saga_timeout_seconds must be > 0"),
        ({"lease_seconds": 0}, "SagaConfig.lease_seconds must be > 0"),
        ({"failure_strategy": "eventually"}, "failure_strategy must be one of"),
    ],
)
def test_bad_values_name_the_setting(settings: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SagaConfig(**settings)
    assert fragment in str(caught.value)


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        SagaConfig(lease_seconds=-1)


def test_strategy_accepts_its_value_in_any_case() -> None:
    config = SagaConfig(failure_strategy="WAIT_ALL")  # type: ignore[arg-type]
    assert config.failure_strategy is ParallelFailureStrategy.WAIT_ALL


def test_run_options_carry_the_defaults() -> None:
    config = SagaConfig(
        max_retries=2,
        retry_backoff=0.1,
        max_retry_backoff=5,
        step_timeout_seconds=3,
        compensation_retries=1,
        failure_strategy=ParallelFailureStrategy.WAIT_ALL,
        saga_timeout_seconds=9,
    )
    assert config.run_options() == RunOptions(
        failure_strategy=ParallelFailureStrategy.WAIT_ALL,
        saga_timeout_seconds=9,
        max_retries=2,
        retry_backoff=0.1,
        max_retry_backoff=5,
        step_timeout_seconds=3,
        compensation_retries=1,
    )


def test_without_a_database_every_run_gets_a_fresh_memory_journal() -> None:
    config = SagaConfig()
    first, second = config.journal(), config.journal()
    assert isinstance(first, MemoryJournal)
    assert first is not second


# -- the process-wide config ------------------------------------------------------------


def test_get_config_returns_one_default_until_configured() -> None:
    sagaz.configure(None)
    default = sagaz.get_config()
    assert default == SagaConfig()
    assert sagaz.get_config() is default


def test_configure_with_a_config_or_settings() -> None:
    mine = SagaConfig(max_retries=3)
    assert sagaz.configure(mine) is mine
    assert sagaz.get_config() is mine

    built = sagaz.configure(max_retries=5, broker_url="memory://other")
    assert sagaz.get_config() is built
    assert (built.max_retries, built.broker_url) == (5, "memory://other")

    sagaz.configure()
    assert sagaz.get_config() == SagaConfig()
    assert sagaz.get_config() is not built


def test_configure_refuses_a_config_and_settings_together() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        sagaz.configure(SagaConfig(), max_retries=1)


# -- lifecycle ----------------------------------------------------------------------------


async def test_initialize_and_close_are_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, bool]] = []
    real = sagaz.config.build_listeners

    def counting(**switches: bool) -> Any:
        built.append(switches)
        return real(**switches)

    monkeypatch.setattr(sagaz.config, "build_listeners", counting)

    def extra(transition: Any) -> None: ...

    config = SagaConfig(log_transitions=True, extra_listeners=(extra,))
    assert config.listeners == (extra,), "switches take effect at initialize"

    await config.close()  # closing before initializing is harmless
    assert await config.initialize() is config
    assert config.initialized
    listeners = config.listeners
    assert listeners == (log_transition, extra)
    await asyncio.gather(config.initialize(), config.initialize())
    assert await config.initialize() is config
    assert len(built) == 1, "resources are built once"
    assert config.listeners is listeners

    await config.close()
    await config.close()
    assert not config.initialized
    assert config.listeners == (extra,)

    await config.initialize()  # and it can be initialized again
    assert config.initialized
    assert len(built) == 2
    await config.close()


async def test_initialize_builds_nothing_without_a_database() -> None:
    config = SagaConfig()
    await config.initialize()
    try:
        assert isinstance(config.journal(), MemoryJournal)
        with pytest.raises(ConfigurationError, match="database_url"):
            _ = config.store
        with pytest.raises(ConfigurationError, match="database_url"):
            _ = config.engine
    finally:
        await config.close()


# -- URLs: checked when the config is built, without connecting ---------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "fragment"),
    [
        ("SAGAZ_DATABASE_URL", "not a url", "is not a valid SQLAlchemy URL"),
        ("SAGAZ_DATABASE_URL", "postgresql://app:secret@db:port/app", "is not a valid"),
        ("SAGAZ_DATABASE_URL", "mysql://app@db/app", "sagaz supports postgresql and sqlite"),
        ("SAGAZ_BROKER_URL", "redis", "must look like scheme://"),
        ("SAGAZ_BROKER_URL", "bogus://host", "unknown broker URL scheme 'bogus://'"),
        ("SAGAZ_BROKER_URL", "app:secret@host", "must look like scheme://"),
    ],
)
def test_unusable_urls_are_refused_naming_the_variable(
    variable: str, raw: str, fragment: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SagaConfig.from_env({variable: raw})
    message = str(caught.value)
    assert message.startswith(f"{variable} (SagaConfig.")
    assert fragment in message
    assert "secret" not in message


@pytest.mark.parametrize(
    "settings",
    [
        {"database_url": "postgresql://app@db/app"},
        {"database_url": "postgresql+asyncpg://app@db/app"},
        {"database_url": "sqlite:///relative.db"},
        {"database_url": "sqlite+aiosqlite://"},
        {"database_url": None},
        {"broker_url": "REDIS://cache:6379/0"},
        {"broker_url": "amqps://user:pw@rabbit/vhost"},
        {"broker_url": "kafka://k1:9092,k2:9092"},
    ],
)
def test_usable_urls_are_accepted(settings: dict[str, Any]) -> None:
    SagaConfig(**settings)  # no I/O: none of these hosts exists


def test_urls_given_in_code_are_checked_too() -> None:
    with pytest.raises(ConfigurationError, match=r"^SagaConfig\.database_url is not usable"):
        SagaConfig(database_url="oracle://app@db/app")
    with pytest.raises(ConfigurationError, match=r"^SagaConfig\.broker_url has an unknown"):
        SagaConfig(broker_url="pulsar://broker")


def test_build_listeners_follows_the_switches_without_initializing() -> None:
    def extra(transition: Any) -> None: ...

    config = SagaConfig(log_transitions=True, extra_listeners=(extra,))
    assert config.build_listeners() == (log_transition, extra)
    assert SagaConfig().build_listeners() == ()
    assert not config.initialized


SECRET = "s3cret-pw"


@pytest.mark.parametrize(
    ("settings", "shown"),
    [
        (
            {
                "database_url": f"postgresql+psycopg://app:{SECRET}@db:5432/app",
                "broker_url": f"redis://:{SECRET}@cache:6379/0",
            },
            ["postgresql+psycopg://app:***@db:5432/app", "redis://:***@cache:6379/0"],
        ),
        (
            {
                "database_url": f"postgresql://app@db/app?password={SECRET}",
                "broker_url": f"amqp://user:{SECRET}@mq/vhost?token={SECRET}",
            },
            ["postgresql://app@db/app?password=", "amqp://user:***@mq/vhost"],
        ),
        (
            {"broker_url": f"nats://a:{SECRET}@n1:4222,nats://b:{SECRET}@n2:4222"},
            ["nats://a:***@n1:4222,nats://b:***@n2:4222", "database_url=None"],
        ),
        ({}, ["broker_url='memory://'", "lease_seconds=30.0"]),
    ],
)
def test_repr_and_str_hide_passwords(settings: dict[str, Any], shown: list[str]) -> None:
    config = SagaConfig(**settings)
    for text in (repr(config), str(config), f"{config}", f"{config!r}"):
        assert SECRET not in text
        for fragment in shown:
            assert fragment in text, text
    assert config.database_url == settings.get("database_url")  # the setting is intact


def test_errors_about_unusable_urls_hide_passwords() -> None:
    for settings in (
        {"database_url": f"postgresql://app:{SECRET}@db:notaport/app"},
        {"broker_url": f"bogus://app:{SECRET}@host"},
        {"broker_url": f"app:{SECRET}@host-without-scheme"},
    ):
        with pytest.raises(ConfigurationError) as caught:
            SagaConfig(**settings)
        assert SECRET not in str(caught.value)
