"""The exceptions sagaz raises. Every one derives from `SagazError`."""

from __future__ import annotations

from collections.abc import Collection


class SagazError(Exception):
    """Base class of every sagaz error."""


class SagaDefinitionError(SagazError):
    """A saga's definition is invalid (unknown dependency, cycle, duplicate step, ...).

    Raised when the saga is defined, never while it runs.
    """


class SagaRegistryError(SagazError):
    """Two different sagas were registered under one name."""


class UnknownSagaError(SagazError, LookupError):
    """No saga is registered under a name (e.g. one read back from the database)."""


class InvalidContextError(SagazError, ValueError):
    """A saga context, a step result or an event payload cannot be stored as JSON.

    The message names the offending key path, e.g. ``context['order']['at']``.
    """


class StepTimeoutError(SagazError, TimeoutError):
    """A step attempt ran longer than its ``timeout_seconds``."""


class SagaTimeoutError(SagazError, TimeoutError):
    """The saga's forward phase ran longer than its ``timeout_seconds``."""


class LeaseLostError(SagazError):
    """A fenced write was refused: another worker owns the saga now.

    The run that gets this must stop at once without touching the saga again.
    """


class DatabaseUnavailableError(SagazError):
    """The database connection failed while a transactional step's transaction ran (a
    restart, the network): not the step's failure. Nothing of the transaction committed,
    or - if the connection broke during COMMIT - it committed together with the step's
    completion record; either way the run stops without recording a failure, and the
    saga is resumed by the next claim, which sees which one happened.
    """


class CorruptRowError(SagazError, ValueError):
    """A row in sagaz's tables cannot be read (written by hand, by an older version or by
    a bug): the message names the saga, the table and the column.

    A worker fails that saga alone (FAILED, with this message as its error) and keeps
    running the others."""


class ConfigurationError(SagazError, ValueError):
    """A configuration value is missing or invalid; the message names the setting."""


class SchemaNotReadyError(ConfigurationError):
    """sagaz's tables are missing from a database, or at another migration revision than
    this sagaz expects. `found` is the revision recorded there (None: none), `expected`
    the head(s) this sagaz ships; the message also names the database and the fix."""

    def __init__(
        self, message: str, *, database: str, found: str | None, expected: Collection[str]
    ) -> None:
        super().__init__(message)
        self.database = database
        self.found = found
        self.expected = tuple(expected)


class CrossBindError(SagazError, RuntimeError):
    """A unit of work would write sagaz's rows on one bind and the application's rows on
    another - two databases, two transactions - so they could not commit together.

    Raised by the Flask integration from the flush or commit, before anything is
    committed; the message names both binds. Also importable from
    `sagaz.integrations.flask`.
    """


class MissingExtraError(SagazError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""

    def __init__(self, extra: str, module: str, purpose: str) -> None:
        super().__init__(
            f"{purpose} needs the '{module}' package, which is not installed. "
            f"Install it with: pip install 'sagaz[{extra}]'"
        )
        self.extra = extra
        self.module = module
