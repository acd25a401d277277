"""Shared database fixtures.

PostgreSQL comes from SAGAZ_TEST_DATABASE_URL (e.g. postgresql://postgres@127.0.0.1:5432/postgres),
else from a testcontainers PostgreSQL when a Docker daemon answers, else the tests that
need it are skipped with a reason saying how to enable them - except under CI=true, where
a missing database fails. Each test gets its own PostgreSQL schema (search_path), so
tests are isolated without the cost of a database per test. SQLite databases live in
pytest's tmp_path, never in the working directory.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from sagaz.store.engines import create_async_engine, create_engine
from sagaz.store.schema import metadata

ENABLE_HINT = (
    "set SAGAZ_TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres "
    "(or run a Docker daemon for testcontainers) to run PostgreSQL tests"
)


def _docker_answers() -> bool:
    """Whether a Docker daemon answers `GET /_ping` (on DOCKER_HOST or the default socket).

    A plain socket, closed whatever happens: the docker client library leaks its socket
    when the daemon is missing, and that ResourceWarning would fail a later test.
    """
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    try:
        if host.startswith("unix://"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(2)
            address: str | tuple[str, int] = host.removeprefix("unix://")
        elif host.startswith("tcp://"):
            hostname, _, port = host.removeprefix("tcp://").partition(":")
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.settimeout(2)
            address = (hostname, int(port or 2375))
        else:
            return False
        with sock:
            sock.connect(address)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            return b" 200 " in sock.recv(64)
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A driver-less URL of a PostgreSQL server the tests may create schemas in."""
    url = os.environ.get("SAGAZ_TEST_DATABASE_URL")
    if url:
        yield url
        return
    if _docker_answers():
        from testcontainers.community.postgres import PostgresContainer  # type: ignore[import-untyped]

        with PostgresContainer("postgres:16-alpine", driver=None) as container:
            yield container.get_connection_url()
        return
    if os.environ.get("CI"):
        pytest.fail(f"no PostgreSQL for the tests under CI: {ENABLE_HINT}")
    pytest.skip(ENABLE_HINT)


@dataclass(frozen=True)
class DatabaseUrls:
    """Sync and async SQLAlchemy URLs of one isolated test database (or schema)."""

    sync: str
    async_: str
    dialect: str
    schema: str | None = None
    application_name: str | None = None

    @property
    def url(self) -> str:
        """A single URL that reaches this database (and schema) on its own: for
        subprocesses such as `sagaz worker --url`."""
        if self.dialect != "postgresql":
            return self.sync
        options = f"-csearch_path={self.schema} -capplication_name={self.application_name}"
        return (
            make_url(self.sync)
            .update_query_dict({"options": options})
            .render_as_string(hide_password=False)
        )

    def sync_engine(self, **kwargs: object) -> sa.Engine:
        """An engine as sagaz builds them (see sagaz.store.engines), on this database."""
        return create_engine(self.sync, **_connect_args(self, asynchronous=False), **kwargs)

    def async_engine(self, **kwargs: object) -> AsyncEngine:
        return create_async_engine(self.async_, **_connect_args(self, asynchronous=True), **kwargs)


def _connect_args(urls: DatabaseUrls, *, asynchronous: bool) -> dict[str, object]:
    if urls.dialect != "postgresql":
        return {}
    settings = {
        "search_path": urls.schema or "public",
        "application_name": urls.application_name or "sagaz-tests",
    }
    if asynchronous and urls.async_.startswith("postgresql+asyncpg"):
        return {"connect_args": {"server_settings": settings}}
    options = " ".join(f"-c{key}={value}" for key, value in settings.items())
    return {"connect_args": {"options": options}}


def postgres_urls(server_url: str, schema: str) -> DatabaseUrls:
    base = make_url(server_url)
    return DatabaseUrls(
        sync=base.set(drivername="postgresql+psycopg").render_as_string(hide_password=False),
        async_=base.set(drivername="postgresql+asyncpg").render_as_string(hide_password=False),
        dialect="postgresql",
        schema=schema,
        application_name=f"sagaz-test-{schema}",
    )


@pytest.fixture
def pg_empty(postgres_server_url: str) -> Iterator[DatabaseUrls]:
    """An empty PostgreSQL schema of its own (search_path points at it); dropped after."""
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(make_url(postgres_server_url).set(drivername="postgresql+psycopg"))
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield postgres_urls(postgres_server_url, schema)
    finally:
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg(pg_empty: DatabaseUrls) -> DatabaseUrls:
    """A PostgreSQL schema of its own with sagaz's tables created."""
    engine = pg_empty.sync_engine()
    with engine.begin() as connection:
        metadata.create_all(connection)
    engine.dispose()
    return pg_empty


@pytest.fixture
def sqlite_empty(tmp_path: Path) -> DatabaseUrls:
    path = tmp_path / "sagaz-test.db"
    return DatabaseUrls(
        sync=f"sqlite:///{path}", async_=f"sqlite+aiosqlite:///{path}", dialect="sqlite"
    )


@pytest.fixture
def sqlite(sqlite_empty: DatabaseUrls) -> DatabaseUrls:
    engine = sqlite_empty.sync_engine()
    with engine.begin() as connection:
        metadata.create_all(connection)
    engine.dispose()
    return sqlite_empty


@pytest.fixture(params=["postgresql", "sqlite"])
def db(request: pytest.FixtureRequest) -> DatabaseUrls:
    """sagaz's tables on PostgreSQL and on SQLite (the test runs once for each)."""
    return request.getfixturevalue("pg" if request.param == "postgresql" else "sqlite")  # type: ignore[no-any-return]


@pytest.fixture
def sync_engine(db: DatabaseUrls) -> Iterator[sa.Engine]:
    engine = db.sync_engine()
    yield engine
    engine.dispose()


@pytest.fixture
async def async_engine(db: DatabaseUrls) -> AsyncIterator[AsyncEngine]:
    engine = db.async_engine()
    yield engine
    await engine.dispose()


@pytest.fixture
def exporter() -> Iterator[Any]:
    """OpenTelemetry's in-memory span exporter, recording this test's spans (the SDK is
    imported only by the tests that use it; see tests/observability/tracing_helpers.py)."""
    from tests.observability.tracing_helpers import recording

    with recording() as spans:
        yield spans
