"""The error the adapters raise for a setup mistake."""

from __future__ import annotations

from sagaz.errors import ConfigurationError

__all__ = ["SetupError"]


class SetupError(ConfigurationError, RuntimeError):
    """A `ConfigurationError` for a mistake in how an adapter is set up (registered twice,
    used outside an application, its database not registered first).

    Earlier versions of the Flask adapter raised RuntimeError for these: this error is
    still one, so ``except RuntimeError`` keeps working; catch ConfigurationError.
    """
