"""Configuration and the explicit lifecycle that framework adapters own.

`SagaConfig` holds settings (plain values, readable from `SAGAZ_*` environment variables)
and, between `await config.initialize()` and `await config.close()`, the resources built
from them. Both calls are idempotent, so an adapter can call them from its lifespan and a
test can call them again without harm.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from sagaz._util import parse_bool
from sagaz.errors import ConfigurationError
from sagaz.journal import MemoryJournal, SagaJournal, TransitionListener
from sagaz.observability import build_listeners
from sagaz.policy import RunOptions
from sagaz.settings import read_settings
from sagaz.types import ParallelFailureStrategy

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from sagaz.store.stores import AsyncSagaStore

log = logging.getLogger("sagaz.config")


_RUN_DEFAULTS = RunOptions()
"""The step and saga defaults, defined once in `sagaz.policy`."""


@dataclass
class SagaConfig:
    """Settings for running sagas, with an explicit initialize/close lifecycle.

    database_url: SQLAlchemy URL of the saga store (None: sagas run in memory only).
    broker_url: where the outbox relay publishes (``memory://``, ``redis://``, ...).
    max_retries / retry_backoff / max_retry_backoff / step_timeout_seconds /
    compensation_retries: step defaults when a step leaves the option unset.
    failure_strategy / saga_timeout_seconds: saga defaults.
    lease_seconds: how long a worker's claim on a saga lasts without renewal.
    log_transitions / metrics / tracing: observability switches (metrics needs the
    ``prometheus`` extra, tracing the ``otel`` extra).
    """

    database_url: str | None = None
    broker_url: str = "memory://"
    max_retries: int = _RUN_DEFAULTS.max_retries
    retry_backoff: float = _RUN_DEFAULTS.retry_backoff
    max_retry_backoff: float = _RUN_DEFAULTS.max_retry_backoff
    step_timeout_seconds: float | None = _RUN_DEFAULTS.step_timeout_seconds
    compensation_retries: int = _RUN_DEFAULTS.compensation_retries
    failure_strategy: ParallelFailureStrategy = _RUN_DEFAULTS.failure_strategy
    saga_timeout_seconds: float | None = _RUN_DEFAULTS.saga_timeout_seconds
    lease_seconds: float = 30.0
    log_transitions: bool = False
    metrics: bool = False
    tracing: bool = False
    extra_listeners: tuple[TransitionListener, ...] = ()

    _listeners: tuple[TransitionListener, ...] = field(default=(), init=False, repr=False)
    _engine: AsyncEngine | None = field(default=None, init=False, repr=False)
    _store: AsyncSagaStore | None = field(default=None, init=False, repr=False)
    _initialized: bool = field(default=False, init=False, repr=False)

    def __repr__(self) -> str:
        """The settings, with the passwords of `database_url` and `broker_url` hidden
        (``***``; a broker URL's query string is left out too): safe to log."""
        from sagaz._util import redact_database_url, redact_url

        shown = {spec.name: getattr(self, spec.name) for spec in fields(self) if spec.repr}
        if self.database_url:
            shown["database_url"] = redact_database_url(self.database_url)
        broker_url = str(self.broker_url)
        if "@" in broker_url or "?" in broker_url:
            shown["broker_url"] = redact_url(broker_url)
        settings = ", ".join(f"{name}={value!r}" for name, value in shown.items())
        return f"{type(self).__name__}({settings})"

    def __post_init__(self) -> None:
        self.failure_strategy = _parse_strategy("failure_strategy", self.failure_strategy)
        for name in ("max_retries", "compensation_retries"):
            _require(name, getattr(self, name), lambda v: isinstance(v, int) and v >= 0, ">= 0")
        for name in ("retry_backoff", "max_retry_backoff"):
            _require(name, getattr(self, name), lambda v: v >= 0, ">= 0")
        for name in ("step_timeout_seconds", "saga_timeout_seconds"):
            value = getattr(self, name)
            if value is not None:
                _require(name, value, lambda v: v > 0, "> 0")
        _require("lease_seconds", self.lease_seconds, lambda v: v > 0, "> 0")
        if self.database_url:  # None (or empty): sagas run in memory only
            _check_database_url(self.database_url)
        from sagaz.outbox.brokers import broker_scheme  # the brokers' registry: imported late

        broker_scheme(self.broker_url, "SagaConfig.broker_url")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> SagaConfig:
        """Build a config from `SAGAZ_*` variables; keyword arguments take precedence.

        A variable with a value of the wrong type or out of range, a database or broker URL
        that cannot be used (checked without connecting), or an unknown keyword raises
        ConfigurationError naming it. See docs/configuration.md for the list.
        """
        _check_overrides(cls, overrides)
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for spec in fields(cls):
            if not spec.init or spec.name == "extra_listeners":
                continue
            variable = f"SAGAZ_{spec.name.upper()}"
            raw = env.get(variable)
            if raw is None or raw == "":
                continue
            values[spec.name] = _convert(variable, raw, spec.default)
        origins = {name: f"SAGAZ_{name.upper()}" for name in values if name not in overrides}
        values.update(overrides)
        return _build(cls, values, origins)

    @classmethod
    def from_mapping(
        cls,
        mapping: Mapping[str, Any],
        prefix: str = "SAGAZ_",
        *,
        where: Callable[[str], str] | None = None,
        **overrides: Any,
    ) -> SagaConfig:
        """Build a config from the `prefix`-ed keys of `mapping` (``SAGAZ_MAX_RETRIES`` in
        Flask's ``app.config``, ``"MAX_RETRIES"`` with ``prefix=""`` in Django's
        ``settings.SAGAZ``); keyword arguments take precedence. Keys without the prefix
        are ignored.

        Each key is a field name in upper case. A string value is converted as
        `from_env` converts a variable (an empty one leaves the default); other values
        are taken as they are (a SQLAlchemy ``URL`` as `database_url` too). Raises
        ConfigurationError naming the key - shown as `where(key)` - for an unknown key
        (with the closest known one), a value of the wrong type or out of range, and a
        database or broker URL that cannot be used.
        """
        show = where if where is not None else (lambda key: key)
        _check_overrides(cls, overrides)
        found = read_settings(mapping, prefix=prefix, known=_setting_names(cls), where=show)
        values: dict[str, Any] = {}
        defaults = {spec.name: spec.default for spec in fields(cls)}
        for name, setting in found.items():
            value = setting.value
            if isinstance(value, str):
                if value == "":
                    continue
                default = defaults[name]
                if default is None and name.endswith("_seconds"):
                    default = 0.0  # a number, not a string
                value = _convert(show(setting.key), value, default)
            elif name == "database_url" and hasattr(value, "render_as_string"):
                value = value.render_as_string(hide_password=False)
            elif isinstance(defaults[name], bool) and not isinstance(value, bool):
                raise ConfigurationError(
                    f"{show(setting.key)} must be true or false, got {value!r}"
                )
            values[name] = value
        origins = {name: show(found[name].key) for name in values if name not in overrides}
        values.update(overrides)
        return _build(cls, values, origins)

    # -- lifecycle -----------------------------------------------------------------

    @property
    def initialized(self) -> bool:
        return self._initialized

    async def initialize(self) -> SagaConfig:
        """Build the resources: listeners and, with a `database_url`, the async engine
        (its connection pool) and the saga store that becomes every saga's journal.

        Idempotent: a second call while initialized does nothing. Nothing in here awaits
        (engines connect lazily), so concurrent calls cannot interleave and no lock - which
        would tie the config to one event loop - is needed.
        """
        if self._initialized:
            return self
        listeners = self.build_listeners()
        if self.database_url:
            from sagaz.store.engines import create_async_engine
            from sagaz.store.stores import AsyncSagaStore

            self._engine = create_async_engine(self.database_url)
            self._store = AsyncSagaStore(self._engine)
        self._listeners = listeners
        self._initialized = True
        return self

    async def close(self) -> None:
        """Release every resource `initialize` built. Idempotent."""
        engine, store = self._engine, self._store
        self._engine, self._store = None, None
        self._listeners = ()
        self._initialized = False
        if store is not None:
            await store.close()
        if engine is not None:
            await engine.dispose()

    # -- what the engine needs -----------------------------------------------------

    @property
    def listeners(self) -> tuple[TransitionListener, ...]:
        return self._listeners if self._initialized else self.extra_listeners

    @property
    def engine(self) -> AsyncEngine:
        """The async engine built by `initialize` from `database_url`."""
        if self._engine is None:
            raise ConfigurationError(
                "no database engine: set database_url and await config.initialize() first"
            )
        return self._engine

    @property
    def store(self) -> AsyncSagaStore:
        """The saga store built by `initialize` from `database_url`."""
        if self._store is None:
            raise ConfigurationError(
                "no saga store: set database_url and await config.initialize() first"
            )
        return self._store

    def journal(self) -> SagaJournal:
        """The store once initialized with a database, else a fresh in-memory journal."""
        return self._store if self._store is not None else MemoryJournal()

    def build_listeners(self) -> tuple[TransitionListener, ...]:
        """New listeners for the observability switches, followed by `extra_listeners`.

        For whoever runs sagas outside `initialize` (e.g. `sagaz worker`). Raises
        MissingExtraError naming the extra when `metrics` or `tracing` needs one that is
        not installed.
        """
        switched = build_listeners(
            log_transitions=self.log_transitions, metrics=self.metrics, tracing=self.tracing
        )
        return (*switched, *self.extra_listeners)

    def run_options(self) -> RunOptions:
        """The step and saga defaults of this config, as the engine takes them."""
        return RunOptions(
            failure_strategy=self.failure_strategy,
            saga_timeout_seconds=self.saga_timeout_seconds,
            max_retries=self.max_retries,
            retry_backoff=self.retry_backoff,
            max_retry_backoff=self.max_retry_backoff,
            step_timeout_seconds=self.step_timeout_seconds,
            compensation_retries=self.compensation_retries,
        )


def _setting_names(cls: type[SagaConfig]) -> frozenset[str]:
    """The fields a mapping or the environment may set (not `extra_listeners`)."""
    return frozenset(spec.name for spec in fields(cls) if spec.init) - {"extra_listeners"}


def _check_overrides(cls: type[SagaConfig], overrides: Mapping[str, Any]) -> None:
    known = {spec.name for spec in fields(cls) if spec.init}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ConfigurationError(f"unknown SagaConfig setting(s): {', '.join(unknown)}")


def _build(cls: type[SagaConfig], values: dict[str, Any], origins: Mapping[str, str]) -> SagaConfig:
    """`cls(**values)`; an error about a setting read from a key names that key too."""
    try:
        return cls(**values)
    except ConfigurationError as error:
        message = str(error)
        for name, origin in origins.items():
            if f"SagaConfig.{name} " in message:
                message = message.replace(f"SagaConfig.{name}", f"{origin} (SagaConfig.{name})", 1)
        raise ConfigurationError(message) from None


def _require(name: str, value: Any, check: Callable[[Any], bool], rule: str) -> None:
    try:
        ok = not isinstance(value, bool) and check(value)
    except TypeError:
        ok = False
    if not ok:
        raise ConfigurationError(f"SagaConfig.{name} must be {rule}, got {value!r}")


def _check_database_url(value: Any) -> None:
    """A URL sagaz can build its engines from: parsed and its backend checked, no I/O."""
    from sqlalchemy.engine import make_url

    from sagaz._util import scrub_passwords
    from sagaz.store.urls import async_url, sync_url

    try:
        make_url(value)
    except Exception:
        raise ConfigurationError(
            "SagaConfig.database_url is not a valid SQLAlchemy URL "
            f"(dialect+driver://user:password@host/database), got {scrub_passwords(str(value))!r}"
        ) from None
    try:
        sync_url(value)
        async_url(value)
    except ConfigurationError as error:
        raise ConfigurationError(f"SagaConfig.database_url is not usable: {error}") from None


def _parse_strategy(name: str, value: Any) -> ParallelFailureStrategy:
    try:
        return ParallelFailureStrategy(str(value).lower())
    except ValueError:
        choices = ", ".join(s.value for s in ParallelFailureStrategy)
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}") from None


def _convert(variable: str, raw: str, default: Any) -> Any:
    if isinstance(default, ParallelFailureStrategy):
        return _parse_strategy(variable, raw)
    if isinstance(default, bool):
        try:
            return parse_bool(raw)
        except ValueError:
            raise ConfigurationError(f"{variable} must be true or false, got {raw!r}") from None
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigurationError(f"{variable} must be an integer, got {raw!r}") from None
    if isinstance(default, float) or (default is None and variable.endswith("_SECONDS")):
        try:
            return float(raw)
        except ValueError:
            raise ConfigurationError(f"{variable} must be a number, got {raw!r}") from None
    return raw


_global: SagaConfig | None = None


def configure(config: SagaConfig | None = None, **settings: Any) -> SagaConfig:
    """Set the process-wide default config (used by sagas built without `config=`).

    `configure(SagaConfig(...))` installs that config; `configure(**settings)` builds one;
    `configure(None)` with no settings resets to a fresh default. Returns the config set.
    The config it replaces is not closed: whoever initialized it closes it.
    """
    global _global
    if config is not None and settings:
        raise ConfigurationError("pass either a SagaConfig or keyword settings, not both")
    _global = config if config is not None else (SagaConfig(**settings) if settings else None)
    return get_config()


def get_config() -> SagaConfig:
    """The process-wide config; a default `SagaConfig()` until `configure` is called."""
    global _global
    if _global is None:
        _global = SagaConfig()
    return _global
