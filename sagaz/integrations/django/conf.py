"""The settings bridge: `settings.SAGAZ` -> `SagazSettings` -> `SagaConfig`.

    SAGAZ = {
        "DATABASE": "default",            # the alias holding sagaz's tables
        "BROKER_URL": "redis://localhost:6379/0",
        "MAX_RETRIES": 3,
    }

Every key is optional: each `SagaConfig` field in upper case (but ``DATABASE_URL``: the
database is a `DATABASES` alias) and the Django adapter's own keys (see
`SagazSettings`); docs/settings.md lists them. The dict is read through the one settings
model (`sagaz.settings.read_settings`, `SagaConfig.from_mapping`) every adapter uses. An
unknown key or a bad value raises `SettingsError` - a ConfigurationError that is also
Django's ImproperlyConfigured - naming the key, when the app loads.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.integrations._core.correlation import CORRELATION_ID_HEADER, validate_header_name
from sagaz.integrations.django import databases
from sagaz.integrations.django.databases import database_from_url
from sagaz.integrations.django.errors import SettingsError
from sagaz.settings import read_settings

__all__ = [
    "SETTING_KEYS",
    "SETTING_NAME",
    "SagazSettings",
    "SettingsError",
    "database_from_url",
    "database_url",
    "get_settings",
    "load_settings",
]

SETTING_NAME = "SAGAZ"
"""The name of sagaz's settings dict in Django's settings (`settings.SAGAZ`)."""

_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")
_CONFIG_SETTINGS = frozenset(spec.name for spec in fields(SagaConfig) if spec.init) - {
    "extra_listeners",
    "database_url",
}
_OWN_SETTINGS = frozenset(
    {"database", "autodiscover", "imports", "correlation_header", "shutdown_grace_seconds"}
)
#: Deprecated key -> the documented one (read with a DeprecationWarning).
ALIASES = {"correlation_id_header": "correlation_header"}
SETTING_KEYS = frozenset(name.upper() for name in _CONFIG_SETTINGS | _OWN_SETTINGS)
"""Every documented key of `settings.SAGAZ` (docs/settings.md lists them)."""


def _where(key: str) -> str:
    return f"settings.{SETTING_NAME}[{key!r}]"


@dataclass(frozen=True, slots=True)
class SagazSettings:
    """`settings.SAGAZ`, validated. Besides the `SagaConfig` keys (``BROKER_URL``,
    ``LEASE_SECONDS``, ``MAX_RETRIES``, ``RETRY_BACKOFF``, ``MAX_RETRY_BACKOFF``,
    ``STEP_TIMEOUT_SECONDS``, ``COMPENSATION_RETRIES``, ``FAILURE_STRATEGY``,
    ``SAGA_TIMEOUT_SECONDS``, ``LOG_TRANSITIONS``, ``METRICS``, ``TRACING``), the keys
    (all optional):

    DATABASE: the `DATABASES` alias holding sagaz's tables; `atomic_saga_start`,
        `atomic_outbox_add`, the management commands and the health view use it unless
        given `using=`/`--database` (default ``"default"``).
    AUTODISCOVER: the module imported from every installed app when Django starts, so
        the sagas it defines are registered (default ``"sagas"``; None turns it off).
    IMPORTS: further modules to import at startup for their sagas (default none).
    CORRELATION_HEADER: the request/response header `SagaContextMiddleware` reads and
        echoes (default ``"X-Correlation-ID"``; ``CORRELATION_ID_HEADER`` is its
        deprecated name).
    SHUTDOWN_GRACE_SECONDS: how long `sagaz_worker` lets in-flight sagas finish on
        SIGTERM before releasing them (default 10).

    ``BROKER_URL`` unset means `sagaz worker`'s default: $SAGAZ_BROKER_URL, else
    ``"memory://"``.
    """

    database: str = "default"
    autodiscover: str | None = "sagas"
    imports: tuple[str, ...] = ()
    correlation_header: str = CORRELATION_ID_HEADER
    shutdown_grace_seconds: float = 10.0
    config_values: tuple[tuple[str, Any], ...] = ()

    def saga_config(self, *, database_url: str | None = None, **defaults: Any) -> SagaConfig:
        """A `SagaConfig` with these settings (and `database_url`, when given);
        `defaults` (SagaConfig fields) apply where ``settings.SAGAZ`` leaves a key unset."""
        values = dict(self.config_values)
        given = {name: value for name, value in defaults.items() if name.upper() not in values}
        return SagaConfig.from_mapping(values, "", where=_where, database_url=database_url, **given)

    @property
    def broker_url(self) -> str | None:
        """The BROKER_URL given, None when unset."""
        value = dict(self.config_values).get("BROKER_URL")
        return None if value is None else str(value)

    @property
    def lease_seconds(self) -> float:
        return self.saga_config().lease_seconds

    @property
    def max_retries(self) -> int:
        return self.saga_config().max_retries

    @property
    def retry_backoff(self) -> float:
        return self.saga_config().retry_backoff

    @property
    def step_timeout_seconds(self) -> float | None:
        return self.saga_config().step_timeout_seconds

    @property
    def correlation_id_header(self) -> str:
        """Deprecated: `correlation_header`."""
        return self.correlation_header


def _bad(key: str, rule: str, value: object) -> SettingsError:
    return SettingsError(f"{_where(key)} must be {rule}, got {value!r}")


def load_settings(raw: object, databases: Mapping[str, Any] | None = None) -> SagazSettings:
    """Validate `raw` (the value of `settings.SAGAZ`; None means all defaults).

    Raises SettingsError (ImproperlyConfigured) naming the key: an unknown key (with the
    closest known one), a value of the wrong type or out of range, a DATABASE alias
    missing from `databases`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise SettingsError(f"settings.{SETTING_NAME} must be a dict, got {type(raw).__name__}")
    try:
        found = read_settings(
            raw, prefix="", known=_CONFIG_SETTINGS | _OWN_SETTINGS, aliases=ALIASES, where=_where
        )
    except ConfigurationError as error:
        raise SettingsError(str(error)) from None
    own = {name: found.pop(name) for name in _OWN_SETTINGS if name in found}
    values: dict[str, Any] = {
        "config_values": tuple(
            (setting.key.upper(), setting.value)
            for setting in found.values()
            if not (setting.name == "broker_url" and setting.value is None)  # the default
        )
    }
    if "database" in own:
        alias = own["database"].value
        if not isinstance(alias, str) or not alias:
            raise _bad("DATABASE", "the alias of a DATABASES entry", alias)
        values["database"] = alias
    alias = values.get("database", "default")
    if databases is not None and alias not in databases:
        raise SettingsError(
            f"{_where('DATABASE')} is {alias!r}, which is not in DATABASES "
            f"({', '.join(sorted(databases)) or 'empty'})"
        )
    if "autodiscover" in own:
        module = own["autodiscover"].value
        if module is not None and (
            not isinstance(module, str) or not _MODULE_NAME.fullmatch(module)
        ):
            raise _bad("AUTODISCOVER", "a module name such as 'sagas', or None", module)
        values["autodiscover"] = module
    if "imports" in own:
        imports = own["imports"].value
        if isinstance(imports, str) or not isinstance(imports, list | tuple):
            raise _bad("IMPORTS", "a list of module names", imports)
        for module in imports:
            if not isinstance(module, str) or not _MODULE_NAME.fullmatch(module):
                raise _bad("IMPORTS", "a list of module names", imports)
        values["imports"] = tuple(imports)
    if "correlation_header" in own:
        setting = own["correlation_header"]
        values["correlation_header"] = validate_header_name(
            setting.value, setting=_where(setting.key), error=SettingsError
        )
    if "shutdown_grace_seconds" in own:
        grace = own["shutdown_grace_seconds"].value
        if isinstance(grace, bool) or not isinstance(grace, int | float) or not grace >= 0:
            raise _bad("SHUTDOWN_GRACE_SECONDS", "a number >= 0", grace)
        values["shutdown_grace_seconds"] = float(grace)
    loaded = SagazSettings(**values)
    try:
        loaded.saga_config()  # SagaConfig's own checks, naming the key
    except ConfigurationError as error:
        raise SettingsError(str(error)) from None
    return loaded


def database_url(alias: str | None = None) -> str:
    """The SQLAlchemy URL of Django database `alias` (default: settings' DATABASE); see
    `sagaz.integrations.django.databases.database_url`."""
    return databases.database_url(alias or get_settings().database)


_lock = threading.Lock()
_cached: SagazSettings | None = None


def get_settings() -> SagazSettings:
    """The validated `settings.SAGAZ` (cached; re-read when a test overrides SAGAZ or
    DATABASES)."""
    global _cached
    current = _cached
    if current is None:
        with _lock:
            if _cached is None:
                _cached = load_settings(
                    getattr(django_settings, SETTING_NAME, None),
                    getattr(django_settings, "DATABASES", None),
                )
            current = _cached
    return current


def _forget(*, setting: str, **_kwargs: Any) -> None:
    global _cached
    if setting in (SETTING_NAME, "DATABASES"):
        with _lock:
            _cached = None


setting_changed.connect(_forget, dispatch_uid="sagaz.integrations.django.conf")


def import_saga_modules(loaded: SagazSettings) -> None:
    """Import the AUTODISCOVER module of every installed app (when it has one) and the
    IMPORTS, so the sagas they define are registered. An error inside such a module
    propagates; a missing IMPORTS module raises SettingsError (ImproperlyConfigured)."""
    if loaded.autodiscover:
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules(loaded.autodiscover)
    for name in loaded.imports:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and name.startswith(error.name):
                raise SettingsError(
                    f"settings.{SETTING_NAME}['IMPORTS'] names {name!r}, which cannot be "
                    f"imported: {error}"
                ) from error
            raise
