"""The one rule for reading sagaz's settings out of a mapping (``app.config``,
``settings.SAGAZ``, the environment): which keys belong to sagaz, what each is called,
and the error an unknown key gets.

A setting has one name everywhere - the `SagaConfig` field or the adapter option in
lower case (``max_retries``) - written as ``PREFIX + NAME.upper()`` in the mapping
(``SAGAZ_MAX_RETRIES`` in Flask's ``app.config``, ``"MAX_RETRIES"`` in Django's
``settings.SAGAZ``). `SagaConfig.from_mapping` and the adapters' settings readers all go
through `read_settings`, so they accept the same keys and refuse the same mistakes.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sagaz.errors import ConfigurationError

__all__ = ["Setting", "read_settings"]


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting found in a mapping: its name (``max_retries``), the key it was given
    under (``SAGAZ_MAX_RETRIES``) and its value as given."""

    name: str
    key: str
    value: Any


def _as_is(key: str) -> str:
    return key


def read_settings(
    mapping: Mapping[str, Any],
    *,
    prefix: str,
    known: Collection[str],
    aliases: Mapping[str, str] | None = None,
    where: Callable[[str], str] = _as_is,
) -> dict[str, Setting]:
    """The settings of `mapping` whose keys start with `prefix`, by setting name.

    `known` are the setting names (lower case) the caller accepts. `aliases` maps a
    deprecated name to its documented one: a key under an alias is read as the documented
    setting with a DeprecationWarning naming the key to use. Keys outside `prefix` are
    ignored (an empty prefix makes every key sagaz's).

    Raises ConfigurationError naming the key - as `where(key)` shows it, with the closest
    known key when one is close - for a key under `prefix` that is not a known setting
    written in upper case, and for a setting given under both its name and an alias.
    """
    aliases = dict(aliases or {})
    found: dict[str, Setting] = {}
    unknown: list[str] = []
    for key, value in mapping.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            if not prefix:
                unknown.append(str(key))
            continue
        suffix = key[len(prefix) :]
        name = suffix.lower()
        if suffix != name.upper() or (name not in known and name not in aliases):
            unknown.append(key)
            continue
        if name in aliases:
            documented = aliases[name]
            warnings.warn(
                f"{where(key)} is deprecated: use {where(prefix + documented.upper())}",
                DeprecationWarning,
                stacklevel=3,
            )
            name = documented
        if name in found:
            raise ConfigurationError(
                f"{where(found[name].key)} and {where(key)} are the same setting: give one"
            )
        found[name] = Setting(name, key, value)
    if unknown:
        raise ConfigurationError(_unknown_message(unknown, prefix, known, where))
    return found


def _unknown_message(
    unknown: list[str], prefix: str, known: Collection[str], where: Callable[[str], str]
) -> str:
    keys = sorted(prefix + name.upper() for name in known)
    described = []
    for key in sorted(unknown):
        close = difflib.get_close_matches(key.upper(), keys, n=1, cutoff=0.6)
        hint = f" (did you mean {where(close[0])}?)" if close else ""
        described.append(f"{where(key)}{hint}")
    return f"unknown sagaz setting(s): {', '.join(described)}; known: {', '.join(keys)}"
