"""The Flask settings: ``SAGAZ_*`` keys of ``app.config`` over the extension's keyword
options, read through the one settings model (`sagaz.settings.read_settings`,
`SagaConfig.from_mapping`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.integrations._core.correlation import CORRELATION_ID_HEADER, validate_header_name
from sagaz.settings import read_settings

__all__ = ["PREFIX", "SETTING_KEYS", "FlaskSettings", "read_flask_settings"]

PREFIX = "SAGAZ_"
#: The Flask extension's own settings (not SagaConfig fields) and their defaults.
EXTENSION_DEFAULTS: dict[str, Any] = {
    "bind_key": None,
    "correlation_header": CORRELATION_ID_HEADER,
    "shutdown_grace_seconds": 10.0,
}
CONFIG_SETTINGS = frozenset(spec.name for spec in fields(SagaConfig) if spec.init) - {
    "extra_listeners"
}
SETTING_KEYS = frozenset(
    PREFIX + name.upper() for name in CONFIG_SETTINGS | set(EXTENSION_DEFAULTS)
)
"""Every ``app.config`` key the extension reads (docs/settings.md lists them)."""


def _where(key: str) -> str:
    return key  # SAGAZ_<NAME> names itself


@dataclass(frozen=True, slots=True)
class FlaskSettings:
    """An app's sagaz settings: its `SagaConfig` (without a database URL taken from the
    db's bind yet) and the extension's own."""

    config_values: Mapping[str, Any]
    bind_key: str | None
    correlation_header: str
    shutdown_grace_seconds: float

    def given(self, name: str) -> bool:
        """Whether the app's settings give `name` (a SagaConfig field) a value."""
        return PREFIX + name.upper() in self.config_values

    def saga_config(self, **overrides: Any) -> SagaConfig:
        """The app's `SagaConfig` (`overrides`, e.g. the bind's database URL, apply only
        where the app's settings leave a value unset)."""
        given = {name: value for name, value in overrides.items() if not self.given(name)}
        return SagaConfig.from_mapping(self.config_values, PREFIX, where=_where, **given)


def read_flask_settings(app_config: Mapping[str, Any], options: Mapping[str, Any]) -> FlaskSettings:
    """The settings of an app: its ``SAGAZ_<NAME>`` keys, over the keyword `options`
    (``name=value``) given to `SagazExtension`.

    Raises ConfigurationError naming the key for an unknown ``SAGAZ_*`` key or keyword
    (with the closest known one) and for a value of the wrong type or out of range.
    """
    known = CONFIG_SETTINGS | set(EXTENSION_DEFAULTS)
    keywords = {PREFIX + name.upper(): value for name, value in options.items()}
    read_settings(
        keywords, prefix=PREFIX, known=known, where=lambda key: key[len(PREFIX) :].lower()
    )
    merged = {
        **keywords,
        **{k: v for k, v in app_config.items() if isinstance(k, str) and k.startswith(PREFIX)},
    }
    found = read_settings(merged, prefix=PREFIX, known=known, where=_where)
    own = {
        name: found.pop(name).value if name in found else default
        for name, default in EXTENSION_DEFAULTS.items()
    }
    header = validate_header_name(own["correlation_header"], setting="SAGAZ_CORRELATION_HEADER")
    settings = FlaskSettings(
        config_values={setting.key: setting.value for setting in found.values()},
        bind_key=own["bind_key"],
        correlation_header=header,
        shutdown_grace_seconds=_grace_seconds(own["shutdown_grace_seconds"]),
    )
    settings.saga_config()  # refuse a bad value now, naming its key
    return settings


def _grace_seconds(value: Any) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if isinstance(value, bool) or not seconds >= 0:
        raise ConfigurationError(
            f"SAGAZ_SHUTDOWN_GRACE_SECONDS must be a number >= 0, got {value!r}"
        )
    return seconds
