"""What a database failure means for whoever hit it: retry, or stop and say why.

One classification, used by the `sagaz` commands, the saga worker's loop and the outbox
relay's loop:

* `is_fatal(error)`: retrying cannot fix it - a missing privilege, table, column or
  schema, a failed authentication, a database that does not exist, a read-only SQLite
  file. A command stops with one line naming the cause and a non-zero exit status.
* `is_transient(error)`: retrying will likely succeed - the database cannot be reached,
  the connection broke (a restart, an administrator's shutdown), a serialization failure
  or deadlock, a busy SQLite file, a pool or statement timeout. Retried, one line each.
* anything else (say a value the database refuses): neither; the loops log it as an error
  and retry.

`describe_failure(error)` is the one line to show: the database's own message (its first
line only: statement parameters - saga contexts, payloads - never appear, nor do values
quoted by data errors, nor a URL's password) with the SQLSTATE and a hint.
`log_failure` logs that line (WARNING when transient, else ERROR) and the traceback at
DEBUG only. Framework-free: it imports SQLAlchemy only.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator

import sqlalchemy as sa

from sagaz._util import escape_text, scrub_passwords
from sagaz.errors import DatabaseUnavailableError

#: SQLSTATE classes (first two characters) and codes that retrying cannot fix.
FATAL_CLASSES = frozenset({"42", "28", "3D", "3F"})
"""42: syntax error or access rule violation (privilege, undefined table/column);
28: invalid authorization; 3D: invalid catalog (no such database); 3F: invalid schema."""

#: SQLSTATE classes and codes that a retry may get past.
TRANSIENT_CLASSES = frozenset({"08", "40", "53"})
"""08: connection exception; 40: transaction rollback (serialization failure, deadlock);
53: insufficient resources (too many connections)."""
TRANSIENT_CODES = frozenset({"57P01", "57P02", "57P03", "57P05", "57014", "55P03"})
"""Administrator/crash shutdown, cannot connect now, idle session timeout, query canceled
(statement timeout), lock not available."""

#: SQLSTATE classes whose messages may quote a value (user data): only the text before
#: the first colon is shown, single-quoted parts left out.
_VALUE_QUOTING_CLASSES = frozenset({"22", "23"})

#: Messages (lower case) of failures that carry no SQLSTATE: connection-time refusals
#: by PostgreSQL through psycopg, and SQLite's errors.
_FATAL_MESSAGES = (
    "password authentication failed",
    "authentication failed",
    "no pg_hba.conf entry",
    "permission denied",
    "does not exist",
    "no such table",
    "no such column",
    "has no column named",
    "readonly database",
    "unable to open database file",
    "file is not a database",
)
_TRANSIENT_MESSAGES = ("database is locked", "database table is locked")

_HINTS = {
    "42501": "the database role lacks a privilege sagaz needs (see docs/configuration.md)",
    "42P01": "sagaz's tables are missing: run `sagaz db upgrade` with the same URL and schema",
    "3F000": "the schema does not exist",
    "no such table": "sagaz's tables are missing: run `sagaz db upgrade` with the same URL",
}

_QUOTED_VALUE = re.compile(r"'[^']*'")
_MAX_LENGTH = 400

log = logging.getLogger("sagaz.store")


def _chain(error: BaseException) -> Iterator[BaseException]:
    """`error`, the driver error it wraps and its causes (a bounded walk)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen and len(seen) < 8:
        seen.add(id(current))
        yield current
        original = getattr(current, "orig", None)
        current = original if isinstance(original, BaseException) else current.__cause__


def sqlstate(error: BaseException) -> str | None:
    """The SQLSTATE of the database error in `error`'s chain (psycopg, asyncpg), if any."""
    for link in _chain(error):
        code = getattr(link, "sqlstate", None) or getattr(link, "pgcode", None)
        if isinstance(code, str) and len(code) == 5:
            return code
    return None


def _driver_error(error: BaseException) -> BaseException:
    """The innermost error worth showing: the driver's (asyncpg's rather than
    SQLAlchemy's adapter around it), else `error` itself."""
    links = [link for link in _chain(error) if not isinstance(link, sa.exc.SQLAlchemyError)]
    return links[-1] if links else error


_CONNECTION_KINDS = frozenset({"OperationalError", "InterfaceError"})
_DATABASE_KINDS = frozenset({"DatabaseError", *_CONNECTION_KINDS})


def _is_database_error(error: BaseException, kinds: frozenset[str] = _DATABASE_KINDS) -> bool:
    """Whether `error` is one of these DB-API error kinds: wrapped by SQLAlchemy or raised
    by the driver itself (the LISTEN connection talks to psycopg and asyncpg directly)."""
    if isinstance(error, sa.exc.DBAPIError):
        error = _driver_error(error)
        if isinstance(error, sa.exc.DBAPIError):
            return True
    return any(kind.__name__ in kinds for kind in type(error).__mro__)


def _message(error: BaseException) -> str:
    return str(_driver_error(error)).lower()


def is_fatal(error: BaseException) -> bool:
    """Whether retrying cannot fix `error` (privileges, missing tables/columns/schema,
    authentication, no such database, read-only SQLite): stop and tell the operator."""
    code = sqlstate(error)
    if code is not None:
        return code[:2] in FATAL_CLASSES
    if not _is_database_error(error) or getattr(error, "connection_invalidated", False):
        return False
    message = _message(error)
    return any(marker in message for marker in _FATAL_MESSAGES)


def is_transient(error: BaseException) -> bool:
    """Whether a retry may get past `error`: the database unreachable or restarting, a
    broken connection, a serialization failure or deadlock, a busy SQLite file, a
    timeout. Never true for an `is_fatal` error."""
    if isinstance(error, DatabaseUnavailableError):  # a step's connection broke
        return True
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    code = sqlstate(error)
    if code is not None:
        return code[:2] in TRANSIENT_CLASSES or code in TRANSIENT_CODES
    if is_fatal(error):
        return False
    if isinstance(error, sa.exc.TimeoutError | OSError | TimeoutError):
        return True  # a pool timeout; connection refused/reset (asyncpg raises OSError)
    if _is_database_error(error, kinds=_CONNECTION_KINDS):
        message = _message(error)
        if "sqlite" in type(_driver_error(error)).__module__:
            return any(marker in message for marker in _TRANSIENT_MESSAGES)
        return True  # no SQLSTATE: the connection could not be made or broke
    return False


def describe_failure(error: BaseException) -> str:
    """One line for `error`: the driver's message (first line, no statement, no
    parameters, no quoted values, no URL password; escaped as `sagaz._util.escape_text`),
    its SQLSTATE and a hint."""
    driver = _driver_error(error)
    code = sqlstate(error)
    lines = [line.strip() for line in str(driver).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if code is not None and code[:2] in _VALUE_QUOTING_CLASSES:
        text = _QUOTED_VALUE.sub("'...'", text.split(":", 1)[0])
    text = escape_text(scrub_passwords(text))
    kind = type(driver).__name__
    line = f"{kind}: {text}" if text else kind
    if code is not None:
        line += f" [SQLSTATE {code}]"
    hint = _HINTS.get(code or "") or next(
        (hint for marker, hint in _HINTS.items() if marker in text.lower()), None
    )
    if hint:
        line += f"; {hint}"
    return line if len(line) <= _MAX_LENGTH else line[: _MAX_LENGTH - 3] + "..."


def log_failure(logger: logging.Logger, error: BaseException, message: str, *args: object) -> None:
    """Log `message % args` followed by `: <describe_failure(error)>` on one line -
    WARNING when the failure is transient, ERROR otherwise - and the traceback only at
    DEBUG (a separate record, emitted only when DEBUG is enabled)."""
    level = logging.WARNING if is_transient(error) else logging.ERROR
    logger.log(level, message + ": %s", *args, describe_failure(error), stacklevel=2)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("the failure above, in full:", exc_info=error, stacklevel=2)


__all__ = [
    "FATAL_CLASSES",
    "TRANSIENT_CLASSES",
    "TRANSIENT_CODES",
    "describe_failure",
    "is_fatal",
    "is_transient",
    "log_failure",
    "sqlstate",
]
