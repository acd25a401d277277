"""Database failures, classified and described on real PostgreSQL and SQLite errors:
`is_fatal` (retrying cannot fix it), `is_transient` (a retry may get past it), and
`describe_failure` (one line, never a statement parameter, quoted value or password).
Engines sagaz creates hide statement parameters from exception texts."""

from __future__ import annotations

import logging
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sagaz.errors import DatabaseUnavailableError
from sagaz.store.engines import create_async_engine, create_engine
from sagaz.store.failures import describe_failure, is_fatal, is_transient, log_failure, sqlstate
from sagaz.store.stores import is_connection_error
from tests.conftest import DatabaseUrls
from tests.roles import PASSWORD, SELECT_ONLY, limited_role

MARKER = "marker-5b1e-user-data"
FAILURES = (sa.exc.SQLAlchemyError, OSError)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def failure(engine: sa.Engine, statement: str, **parameters: object) -> Exception:
    with pytest.raises(FAILURES) as caught, engine.begin() as connection:
        connection.execute(sa.text(statement), parameters)
    return caught.value


async def async_failure(
    url: str, statement: str, connect_args: dict[str, object] | None = None, **parameters: object
) -> Exception:
    engine = create_async_engine(url, connect_args=connect_args or {})
    try:
        with pytest.raises(FAILURES) as caught:
            async with engine.begin() as connection:
                await connection.execute(sa.text(statement), parameters)
        return caught.value
    finally:
        await engine.dispose()


async def pg_failure(
    pg: DatabaseUrls, asynchronous: bool, statement: str, **parameters: object
) -> Exception:
    """The error `statement` raises on the test schema, through asyncpg or psycopg."""
    if asynchronous:
        return await async_failure(pg.async_, statement, **parameters)
    engine = pg.sync_engine()
    try:
        return failure(engine, statement, **parameters)
    finally:
        engine.dispose()


def assert_described(error: BaseException, *fragments: str) -> str:
    line = describe_failure(error)
    assert "\n" not in line
    assert MARKER not in line
    assert PASSWORD not in line
    for fragment in fragments:
        assert fragment in line, line
    return line


# -- parameters never in exception texts ------------------------------------------------


def test_engines_sagaz_creates_hide_parameters_from_errors(db: DatabaseUrls) -> None:
    engine = db.sync_engine()
    try:
        error = failure(engine, "SELECT :value FROM no_such_table", value=MARKER)
    finally:
        engine.dispose()
    assert "no_such_table" in str(error)
    assert MARKER not in str(error)
    assert is_fatal(error)


async def test_async_engines_sagaz_creates_hide_parameters_from_errors(db: DatabaseUrls) -> None:
    error = await async_failure(db.async_, "SELECT :value FROM no_such_table", value=MARKER)
    assert MARKER not in str(error)
    assert is_fatal(error)
    assert not is_transient(error)


def test_hide_parameters_can_be_turned_off_for_debugging(sqlite: DatabaseUrls) -> None:
    engine = create_engine(sqlite.sync, hide_parameters=False)
    try:
        assert MARKER in str(failure(engine, "SELECT :value FROM no_such_table", value=MARKER))
    finally:
        engine.dispose()


# -- failures retrying cannot fix -------------------------------------------------------


@pytest.fixture
def pg_sync(pg: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = pg.sync_engine()
    yield engine
    engine.dispose()


def test_a_missing_privilege_is_fatal(postgres_server_url: str, pg: DatabaseUrls) -> None:
    with limited_role(postgres_server_url, pg, SELECT_ONLY) as url:
        engine = create_engine(url)
        try:
            engine.connect().close()  # the role may connect and read
            error = failure(engine, "UPDATE sagaz_sagas SET error = :c", c=MARKER)
        finally:
            engine.dispose()
    assert sqlstate(error) == "42501"
    assert is_fatal(error)
    assert not is_transient(error)
    assert_described(error, "permission denied for table sagaz_sagas", "42501", "privilege")


async def test_a_missing_privilege_is_fatal_through_asyncpg(
    postgres_server_url: str, pg: DatabaseUrls
) -> None:
    with limited_role(postgres_server_url, pg, SELECT_ONLY) as url:
        asyncpg_url = make_url(url).set(drivername="postgresql+asyncpg", query={})
        error = await async_failure(
            asyncpg_url.render_as_string(hide_password=False),
            "UPDATE sagaz_sagas SET error = :c",
            {"server_settings": {"search_path": str(pg.schema)}},
            c=MARKER,
        )
    assert is_fatal(error)
    assert not is_transient(error)
    assert_described(error, "permission denied for table sagaz_sagas", "42501")


@pytest.mark.parametrize(
    ("statement", "code"),
    [
        ("SELECT 1 FROM no_such_table", "42P01"),
        ("SELECT no_such_column FROM sagaz_sagas", "42703"),
        ("SET LOCAL search_path TO no_such_schema_x; CREATE TABLE t (i int)", "3F000"),
    ],
)
def test_missing_tables_columns_and_schemas_are_fatal(
    pg_sync: sa.Engine, statement: str, code: str
) -> None:
    error = failure(pg_sync, statement)
    assert sqlstate(error) == code
    assert is_fatal(error)
    assert not is_transient(error)
    assert_described(error, code)


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
@pytest.mark.parametrize(
    "change", [{"username": "no_such_role_x"}, {"database": "no_such_database_x"}]
)
async def test_a_refused_login_is_fatal(
    postgres_server_url: str, driver: str, change: dict[str, str]
) -> None:
    url = make_url(postgres_server_url).set(drivername=driver, password=PASSWORD, **change)
    error = await async_failure(url.render_as_string(hide_password=False), "SELECT 1")
    assert is_fatal(error)
    assert not is_transient(error)
    assert_described(error, "does not exist")


def test_a_read_only_sqlite_file_is_fatal(sqlite: DatabaseUrls, tmp_path: Path) -> None:
    read_only = f"sqlite:///file:{tmp_path / 'sagaz-test.db'}?mode=ro&uri=true"
    engine = create_engine(read_only)
    try:
        error = failure(engine, "UPDATE sagaz_sagas SET error = :c", c=MARKER)
    finally:
        engine.dispose()
    assert is_fatal(error)
    assert not is_transient(error)
    assert_described(error, "readonly database")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT 1 FROM no_such_table",
        "SELECT no_such_column FROM sagaz_sagas",
        "INSERT INTO sagaz_sagas (no_such_column) VALUES (1)",  # "has no column named"
    ],
)
def test_missing_sqlite_tables_and_columns_are_fatal_not_connection_errors(
    sqlite: DatabaseUrls, statement: str
) -> None:
    """SQLite reports them as OperationalError, which also means a lost connection."""
    engine = create_engine(sqlite.sync)
    try:
        error = failure(engine, statement)
    finally:
        engine.dispose()
    assert isinstance(error, sa.exc.OperationalError)
    assert is_fatal(error)
    assert not is_transient(error)
    assert not is_connection_error(error)


# -- failures a retry may get past ------------------------------------------------------


@pytest.mark.parametrize("driver", ["postgresql+psycopg", "postgresql+asyncpg"])
async def test_an_unreachable_server_is_transient(postgres_server_url: str, driver: str) -> None:
    url = make_url(postgres_server_url).set(
        drivername=driver, port=closed_port(), password=PASSWORD
    )
    error = await async_failure(url.render_as_string(hide_password=False), "SELECT 1")
    assert is_transient(error)
    assert not is_fatal(error)
    line = assert_described(error)
    assert "refused" in line.lower() or "connect call failed" in line.lower(), line


def test_errors_the_driver_raises_itself_are_classified(postgres_server_url: str) -> None:
    """The LISTEN connection talks to the driver directly: its errors are not wrapped."""
    import psycopg

    server = make_url(postgres_server_url)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host=server.host, port=closed_port(), password=PASSWORD)
    assert is_transient(refused.value)
    assert not is_fatal(refused.value)
    with pytest.raises(psycopg.OperationalError) as unknown_role:
        psycopg.connect(host=server.host, port=server.port, user="no_such_role_x")
    assert is_fatal(unknown_role.value)
    assert not is_transient(unknown_role.value)
    assert_described(unknown_role.value, "no_such_role_x")


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_terminated_connection_is_transient(pg: DatabaseUrls, asynchronous: bool) -> None:
    """What every connection sees when PostgreSQL restarts or an administrator ends it."""
    statement = "SELECT pg_terminate_backend(pg_backend_pid()), :value"
    error = await pg_failure(pg, asynchronous, statement, value=MARKER)
    assert is_transient(error)
    assert not is_fatal(error)
    assert_described(error, "terminating connection due to administrator command")


def test_a_connection_lost_inside_a_transactional_step_is_transient(
    postgres_server_url: str,
) -> None:
    """The worker logs it as a WARNING like any other broken connection, not an ERROR."""
    import psycopg

    server = make_url(postgres_server_url)
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(host=server.host, port=closed_port(), password=PASSWORD)
    wrapped = DatabaseUnavailableError("saga x: the database connection failed")
    wrapped.__cause__ = refused.value
    assert is_transient(wrapped)
    assert not is_fatal(wrapped)


@pytest.mark.parametrize("code", ["40001", "40P01", "57P01", "08006"])
def test_serialization_failures_deadlocks_and_shutdowns_are_transient(
    pg_sync: sa.Engine, code: str
) -> None:
    error = failure(
        pg_sync, f"DO $$BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END$$"
    )
    assert sqlstate(error) == code
    assert is_transient(error)
    assert not is_fatal(error)


def test_a_busy_sqlite_file_is_transient(sqlite: DatabaseUrls, tmp_path: Path) -> None:
    holder = sqlite3.connect(tmp_path / "sagaz-test.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    engine = sa.create_engine(sqlite.sync, connect_args={"timeout": 0})
    try:
        error = failure(engine, "UPDATE sagaz_sagas SET error = :c", c=MARKER)
    finally:
        engine.dispose()
        holder.execute("ROLLBACK")
        holder.close()
    assert is_transient(error)
    assert not is_fatal(error)
    assert_described(error, "database is locked")


# -- neither: logged as errors, retried --------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_values_quoted_by_data_errors_are_left_out(
    pg: DatabaseUrls, asynchronous: bool
) -> None:
    error = await pg_failure(pg, asynchronous, "SELECT CAST(:value AS uuid)", value=MARKER)
    assert not is_fatal(error)
    assert not is_transient(error)
    assert_described(error, "22")


def test_passwords_in_messages_are_hidden() -> None:
    error = RuntimeError(f"cannot reach redis://:{PASSWORD}@127.0.0.1:1/0\nsecond line")
    assert describe_failure(error) == "RuntimeError: cannot reach redis://:***@127.0.0.1:1/0"


# -- logging --------------------------------------------------------------------------


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Callable[[int], list[logging.LogRecord]]:
    def at(level: int) -> list[logging.LogRecord]:
        caplog.clear()
        caplog.set_level(level, logger="tests.failures")
        return caplog.records

    return at


def test_log_failure_logs_one_line_and_the_traceback_only_at_debug(
    pg_sync: sa.Engine, captured: Callable[[int], list[logging.LogRecord]]
) -> None:
    logger = logging.getLogger("tests.failures")
    transient = failure(pg_sync, "DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '57P01'; END$$")
    fatal = failure(pg_sync, "SELECT :value FROM no_such_table", value=MARKER)

    records = captured(logging.INFO)
    log_failure(logger, transient, "claiming failed, retrying in %.1fs", 0.5)
    log_failure(logger, fatal, "claiming failed")
    assert [(r.levelno, r.exc_info) for r in records] == [
        (logging.WARNING, None),
        (logging.ERROR, None),
    ]
    assert records[0].getMessage().startswith("claiming failed, retrying in 0.5s: AdminShutdown")
    assert 'relation "no_such_table" does not exist' in records[1].getMessage()

    records = captured(logging.DEBUG)
    log_failure(logger, fatal, "claiming failed")
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]
    assert records[1].exc_info is not None
    assert records[1].exc_info[1] is fatal
    assert MARKER not in "".join(logging.Formatter().format(r) for r in records)
