"""Small helpers every part of sagaz shares, each written once: error descriptions,
retry backoff, URL redaction, boolean parsing, the current time, random ids and optional
imports.

Nothing here does I/O or imports another sagaz module but `sagaz.errors`, so any module
may import it without creating an import circle.
"""

from __future__ import annotations

import gc
import os
import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit, urlunsplit

from sagaz.errors import MissingExtraError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

__all__ = [
    "backoff",
    "describe",
    "escape_text",
    "freeze_startup_heap",
    "parse_bool",
    "random_uuid",
    "redact_database_url",
    "redact_url",
    "requires_extra",
    "scrub_passwords",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC (what every stored timestamp uses)."""
    return datetime.now(UTC)


def random_uuid() -> str:
    """A random (version 4) UUID in canonical text form, as ``str(uuid.uuid4())`` gives,
    from the same source (`os.urandom`), built without a `uuid.UUID` object."""
    digits = os.urandom(16).hex()
    variant = "89ab"[int(digits[16], 16) & 3]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:]}"


def freeze_startup_heap() -> None:
    """Collect garbage once, then move every object alive now into the garbage
    collector's permanent generation (`gc.freeze`), which later collections skip.

    For a process that runs one long-lived worker (`sagaz worker` calls it once started):
    its start-up objects - modules, SQLAlchemy metadata, the application's saga
    definitions - are never garbage, yet every full collection would walk them again; a
    busy worker triggers such collections every few thousand sagas. Process-wide, so the
    library never calls it on its own (see docs/workers.md, Performance)."""
    gc.collect()
    gc.freeze()


# -- error descriptions --------------------------------------------------------------------


def escape_text(text: str) -> str:
    """`text` storable in any text column: a NUL character (which PostgreSQL refuses) is
    written as ``\\x00`` and a lone surrogate (which UTF-8 cannot encode) as ``\\udXXX``."""
    return text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()


def describe(error: BaseException) -> str:
    """``Type: message`` of `error` on one line, or ``Type`` when it has no message, with
    its text escaped (`escape_text`), so it can be stored on a saga or an event as is."""
    text = escape_text(str(error))
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- retries -------------------------------------------------------------------------------


def backoff(attempts: int, base: float, maximum: float) -> float:
    """Seconds to wait before the next try after `attempts` failed ones (1 for the first
    retry): exponential with "equal jitter". The ceiling is ``base * 2 ** (attempts - 1)``,
    at most `maximum`; the delay is uniform between half the ceiling and the ceiling, so
    retries of many failures spread out but never wait less than half the nominal delay.
    `attempts` below 1 counts as 1; never raises for a large `attempts`."""
    exponent = min(max(attempts, 1) - 1, 62)
    ceiling = min(maximum, base * 2.0**exponent)
    return ceiling / 2 + random.uniform(0, ceiling / 2)


# -- settings ------------------------------------------------------------------------------

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_bool(value: str) -> bool:
    """True for 1/true/yes/on, False for 0/false/no/off (any case, surrounding blanks
    ignored); ValueError for anything else."""
    lowered = value.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{value!r} is not a boolean (true/false)")


# -- URLs ----------------------------------------------------------------------------------

_PASSWORD = re.compile(r"((?:^|(?<=[\s,'\"(]))(?:[\w+.-]+://)?[^:/@\s,'\"]*:)[^\s,'\"]*@")


def scrub_passwords(text: str) -> str:
    """`text` (free text, e.g. a driver's error message) with the password of every
    ``scheme://user:password@`` (or a schemeless ``user:password@``) in it shown as
    ``***``."""
    return _PASSWORD.sub(r"\1***@", text)


def redact_database_url(url: str | URL) -> str:
    """A SQLAlchemy database URL fit for a message or a log line: its password (also one
    given as a ``password`` query parameter) shown as ``***``. Never raises: what is not
    a URL is shown with `scrub_passwords`."""
    from sqlalchemy.engine import make_url  # here: importing sagaz._util needs no SQLAlchemy

    try:
        parsed = make_url(url)
    except Exception:
        return scrub_passwords(str(url))
    if "password" in parsed.query:
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def redact_url(url: str) -> str:
    """A broker URL fit for a message: the password (or a lone user part, which may be a
    token) replaced by ``***`` and the query string, whose parameters may hold secrets,
    left out. Several comma-separated URLs are redacted one by one. Never raises."""
    if "," in url:
        return ",".join(redact_url(part.strip()) for part in url.split(","))
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, host = netloc.rpartition("@")
        user, colon, _secret = userinfo.partition(":")
        netloc = f"{user}:***@{host}" if colon else f"***@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# -- optional dependencies -----------------------------------------------------------------


@contextmanager
def requires_extra(extra: str, package: str, purpose: str) -> Iterator[None]:
    """Run the imports of an optional dependency: an ImportError inside becomes a
    `MissingExtraError` saying that `purpose` needs `package` and naming the extra to
    install (``pip install 'sagaz[extra]'``)::

        with requires_extra("nats", "nats-py", "The NATS JetStream broker"):
            import nats
    """
    try:
        yield
    except MissingExtraError:
        raise
    except ImportError as error:
        raise MissingExtraError(extra, package, purpose) from error
