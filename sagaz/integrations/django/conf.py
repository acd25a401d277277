"""The settings bridge: `settings.SAGAZ` -> `SagazSettings` -> `SagaConfig`, and the
database URL sagaz's workers use, derived from `DATABASES`.

    SAGAZ = {
        "DATABASE": "default",            # the alias holding sagaz's tables
        "BROKER_URL": "redis://localhost:6379/0",
    }

Every key is optional (see `SagazSettings` for the list and defaults). An unknown key or
a bad value raises `ImproperlyConfigured` naming it, when the app loads.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.db import connections
from sqlalchemy.engine import URL, make_url

from sagaz.config import SagaConfig
from sagaz.errors import ConfigurationError
from sagaz.integrations._base import CORRELATION_ID_HEADER, validate_header_name

__all__ = [
    "SETTING_NAME",
    "SagazSettings",
    "database_from_url",
    "database_url",
    "get_settings",
    "load_settings",
]

SETTING_NAME = "SAGAZ"
"""The name of sagaz's settings dict in Django's settings (`settings.SAGAZ`)."""

#: DATABASES[...]["OPTIONS"] keys that Django itself consumes (not psycopg arguments).
_DJANGO_ONLY_OPTIONS = frozenset(
    {"isolation_level", "server_side_binding", "assume_role", "pool", "init_command"}
)
_MODULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


@dataclass(frozen=True, slots=True)
class SagazSettings:
    """`settings.SAGAZ`, validated. The keys (all optional):

    DATABASE: the `DATABASES` alias holding sagaz's tables; `atomic_saga_start`,
        `atomic_outbox_add`, the management commands and the health view use it unless
        given `using=`/`--database` (default ``"default"``).
    BROKER_URL: where `sagaz_worker`'s outbox relay publishes (default: `sagaz worker`'s,
        i.e. $SAGAZ_BROKER_URL, else ``"memory://"``).
    AUTODISCOVER: the module imported from every installed app when Django starts, so
        the sagas it defines are registered (default ``"sagas"``; None turns it off).
    IMPORTS: further modules to import at startup for their sagas (default none).
    LEASE_SECONDS: how long a worker's claim on a saga lasts without renewal (30).
    MAX_RETRIES / RETRY_BACKOFF / STEP_TIMEOUT_SECONDS: step defaults for steps that
        leave them unset (0, 0.5 s, none), used by `run_saga`.
    CORRELATION_ID_HEADER: the request/response header `SagaContextMiddleware` reads and
        echoes (default ``"X-Correlation-ID"``).
    """

    database: str = "default"
    broker_url: str | None = None
    autodiscover: str | None = "sagas"
    imports: tuple[str, ...] = ()
    lease_seconds: float = 30.0
    max_retries: int = 0
    retry_backoff: float = 0.5
    step_timeout_seconds: float | None = None
    correlation_id_header: str = CORRELATION_ID_HEADER

    def saga_config(self, *, database_url: str | None = None) -> SagaConfig:
        """A `SagaConfig` with these settings (and `database_url`, when given)."""
        options: dict[str, Any] = {
            "lease_seconds": self.lease_seconds,
            "max_retries": self.max_retries,
            "retry_backoff": self.retry_backoff,
            "step_timeout_seconds": self.step_timeout_seconds,
        }
        if self.broker_url is not None:
            options["broker_url"] = self.broker_url
        return SagaConfig(database_url=database_url, **options)


_KEYS = {
    "DATABASE",
    "BROKER_URL",
    "AUTODISCOVER",
    "IMPORTS",
    "LEASE_SECONDS",
    "MAX_RETRIES",
    "RETRY_BACKOFF",
    "STEP_TIMEOUT_SECONDS",
    "CORRELATION_ID_HEADER",
}


def _bad(key: str, rule: str, value: object) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"settings.{SETTING_NAME}[{key!r}] must be {rule}, got {value!r}")


def _number(key: str, value: object, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise _bad(key, "a number > 0" + (" or None" if optional else ""), value)
    return float(value)


def load_settings(raw: object, databases: Mapping[str, Any] | None = None) -> SagazSettings:
    """Validate `raw` (the value of `settings.SAGAZ`; None means all defaults).

    Raises ImproperlyConfigured naming the key: an unknown key, a value of the wrong
    type or out of range, a DATABASE alias missing from `databases`.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ImproperlyConfigured(
            f"settings.{SETTING_NAME} must be a dict, got {type(raw).__name__}"
        )
    unknown = sorted(str(key) for key in raw if key not in _KEYS)
    if unknown:
        raise ImproperlyConfigured(
            f"settings.{SETTING_NAME} has unknown key(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_KEYS))}"
        )
    values: dict[str, Any] = {}
    if "DATABASE" in raw:
        alias = raw["DATABASE"]
        if not isinstance(alias, str) or not alias:
            raise _bad("DATABASE", "the alias of a DATABASES entry", alias)
        values["database"] = alias
    alias = values.get("database", "default")
    if databases is not None and alias not in databases:
        raise ImproperlyConfigured(
            f"settings.{SETTING_NAME}['DATABASE'] is {alias!r}, which is not in DATABASES "
            f"({', '.join(sorted(databases)) or 'empty'})"
        )
    if "BROKER_URL" in raw:
        broker = raw["BROKER_URL"]
        if broker is not None and (not isinstance(broker, str) or "://" not in broker):
            raise _bad("BROKER_URL", "a broker URL such as redis://host:6379/0", broker)
        values["broker_url"] = broker
    if "AUTODISCOVER" in raw:
        module = raw["AUTODISCOVER"]
        if module is not None and (
            not isinstance(module, str) or not _MODULE_NAME.fullmatch(module)
        ):
            raise _bad("AUTODISCOVER", "a module name such as 'sagas', or None", module)
        values["autodiscover"] = module
    if "IMPORTS" in raw:
        imports = raw["IMPORTS"]
        if isinstance(imports, str) or not isinstance(imports, list | tuple):
            raise _bad("IMPORTS", "a list of module names", imports)
        for module in imports:
            if not isinstance(module, str) or not _MODULE_NAME.fullmatch(module):
                raise _bad("IMPORTS", "a list of module names", imports)
        values["imports"] = tuple(imports)
    if "LEASE_SECONDS" in raw:
        values["lease_seconds"] = _number("LEASE_SECONDS", raw["LEASE_SECONDS"])
    if "MAX_RETRIES" in raw:
        retries = raw["MAX_RETRIES"]
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise _bad("MAX_RETRIES", "an int >= 0", retries)
        values["max_retries"] = retries
    if "RETRY_BACKOFF" in raw:
        backoff = raw["RETRY_BACKOFF"]
        if isinstance(backoff, bool) or not isinstance(backoff, int | float) or backoff < 0:
            raise _bad("RETRY_BACKOFF", "a number >= 0", backoff)
        values["retry_backoff"] = float(backoff)
    if "STEP_TIMEOUT_SECONDS" in raw:
        values["step_timeout_seconds"] = _number(
            "STEP_TIMEOUT_SECONDS", raw["STEP_TIMEOUT_SECONDS"], optional=True
        )
    if "CORRELATION_ID_HEADER" in raw:
        values["correlation_id_header"] = validate_header_name(
            raw["CORRELATION_ID_HEADER"],
            setting=f"settings.{SETTING_NAME}['CORRELATION_ID_HEADER']",
            error=ImproperlyConfigured,
        )
    loaded = SagazSettings(**values)
    try:
        loaded.saga_config()  # SagaConfig's own checks, for good measure
    except ConfigurationError as error:
        raise ImproperlyConfigured(f"settings.{SETTING_NAME}: {error}") from error
    return loaded


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
    propagates; a missing IMPORTS module raises ImproperlyConfigured."""
    if loaded.autodiscover:
        from django.utils.module_loading import autodiscover_modules

        autodiscover_modules(loaded.autodiscover)
    for name in loaded.imports:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name is not None and name.startswith(error.name):
                raise ImproperlyConfigured(
                    f"settings.{SETTING_NAME}['IMPORTS'] names {name!r}, which cannot be "
                    f"imported: {error}"
                ) from error
            raise


# -- database URLs ------------------------------------------------------------------------


def database_url(alias: str | None = None) -> str:
    """The SQLAlchemy URL of Django database `alias` (default: settings' DATABASE), for
    processes and engines of sagaz's own: ``postgresql+psycopg://...`` with the
    connection's psycopg OPTIONS (search_path via ``options``, ``application_name``,
    ``sslmode``, ...) as query arguments, or ``sqlite:///NAME``.

    Read from the live connection settings, so a test database Django created is the one
    named. Raises ImproperlyConfigured for a database sagaz does not support (only
    PostgreSQL and SQLite) and for an in-memory SQLite database (no other connection can
    see it).
    """
    alias = alias or get_settings().database
    connection = connections[alias]
    settings_dict: Mapping[str, Any] = connection.settings_dict
    vendor = connection.vendor
    if vendor == "postgresql":
        return _postgresql_url(settings_dict).render_as_string(hide_password=False)
    if vendor == "sqlite":
        name = str(settings_dict.get("NAME") or "")
        if not name or name == ":memory:" or "mode=memory" in name:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}] is an in-memory SQLite database; sagaz's workers need "
                "a database file they can open too"
            )
        return URL.create("sqlite", database=name).render_as_string(hide_password=False)
    raise ImproperlyConfigured(
        f"DATABASES[{alias!r}] is {vendor}; sagaz supports PostgreSQL and SQLite"
    )


def _postgresql_url(settings_dict: Mapping[str, Any]) -> URL:
    options = dict(settings_dict.get("OPTIONS") or {})
    query: dict[str, str] = {
        str(key): str(value)
        for key, value in options.items()
        if key not in _DJANGO_ONLY_OPTIONS and value is not None
    }
    host = str(settings_dict.get("HOST") or "") or None
    if host is not None and host.startswith("/"):  # a Unix socket directory
        query["host"] = host
        host = None
    port = settings_dict.get("PORT")
    return URL.create(
        "postgresql+psycopg",
        username=settings_dict.get("USER") or None,
        password=settings_dict.get("PASSWORD") or None,
        host=host,
        port=int(port) if port else None,
        database=settings_dict.get("NAME") or None,
        query=query,
    )


def database_from_url(url: str | URL) -> dict[str, Any]:
    """A `DATABASES` entry for a SQLAlchemy-style URL (the inverse of `database_url`):
    ``postgresql[+driver]://user:password@host:port/name?options=...`` (query arguments
    become psycopg OPTIONS) or ``sqlite:///path``. For settings files that take one
    database URL from the environment."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as error:
        raise ImproperlyConfigured(f"{url!r} is not a database URL") from error
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database:
            raise ImproperlyConfigured(f"{url!r}: a SQLite URL needs a file path")
        return {"ENGINE": "django.db.backends.sqlite3", "NAME": parsed.database}
    if backend == "postgresql":
        return {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": parsed.database or "",
            "USER": parsed.username or "",
            "PASSWORD": parsed.password or "",
            "HOST": parsed.host or "",
            "PORT": str(parsed.port or ""),
            "OPTIONS": {
                key: value if isinstance(value, str) else value[-1]
                for key, value in parsed.query.items()
            },
        }
    raise ImproperlyConfigured(f"{url!r}: sagaz supports postgresql and sqlite, not {backend}")
