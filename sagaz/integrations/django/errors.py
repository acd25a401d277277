"""The error the Django integration raises for a configuration mistake."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from sagaz.errors import ConfigurationError

__all__ = ["SettingsError"]


class SettingsError(ConfigurationError, ImproperlyConfigured):
    """A bad `settings.SAGAZ` or `DATABASES` entry for sagaz: sagaz's ConfigurationError,
    like every adapter raises, and Django's ImproperlyConfigured, what Django reports for
    a settings mistake."""
