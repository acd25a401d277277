"""The startup schema check every web integration runs (sagaz.store.schema_check): ready
at the head revision or with complete `create_all` tables; refused - naming the database
without its password, the revision found and expected, and the fix - otherwise."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from sagaz import ConfigurationError, SchemaNotReadyError
from sagaz.store import migrations
from sagaz.store.schema_check import (
    DJANGO_HINT,
    SchemaState,
    check_schema,
    check_schema_async,
    expected_columns,
    verify_schema,
)
from tests.conftest import DatabaseUrls

(HEAD,) = migrations.heads()


def with_password(url: str) -> str:
    """`url` with a password (PostgreSQL here trusts local connections: it is ignored)."""
    return sa.make_url(url).set(password="s3cret-pw").render_as_string(hide_password=False)


def test_head_is_what_the_migrations_ship() -> None:
    assert tuple(migrations.heads()) == (HEAD,)


@pytest.mark.parametrize("kind", ["pg_empty", "sqlite_empty"])
def test_a_database_without_sagaz_tables_is_refused(
    kind: str, request: pytest.FixtureRequest
) -> None:
    urls: DatabaseUrls = request.getfixturevalue(kind)
    url = with_password(urls.url) if urls.dialect == "postgresql" else urls.url
    if urls.dialect == "sqlite":
        sa.create_engine(url).connect().close()  # an empty database file
    with pytest.raises(SchemaNotReadyError) as raised:
        check_schema(url)
    message = str(raised.value)
    assert isinstance(raised.value, ConfigurationError)
    assert f"are not at revision {HEAD} (found: none; missing tables: sagaz_inbox" in message
    assert message.endswith(": run `sagaz db upgrade`")
    assert "s3cret-pw" not in message
    assert (raised.value.found, raised.value.expected) == (None, (HEAD,))


@pytest.mark.parametrize("kind", ["pg_empty", "sqlite_empty"])
async def test_the_head_revision_is_ready_sync_and_async(
    kind: str, request: pytest.FixtureRequest
) -> None:
    urls: DatabaseUrls = request.getfixturevalue(kind)
    migrations.upgrade(urls.url)
    check_schema(urls.url)
    engine = urls.async_engine()
    try:
        await check_schema_async(engine)
    finally:
        await engine.dispose()


def test_an_older_revision_is_refused_naming_both(pg_empty: DatabaseUrls) -> None:
    migrations.upgrade(pg_empty.url, "0002_json_text")
    engine = pg_empty.sync_engine(poolclass=sa.NullPool)
    with pytest.raises(
        SchemaNotReadyError,
        match=f"at revision 0002_json_text, this sagaz expects {HEAD}: run `sagaz db upgrade`",
    ) as raised:
        check_schema(engine)
    assert raised.value.found == "0002_json_text"


def test_tables_downgraded_to_base_are_refused(sqlite_empty: DatabaseUrls) -> None:
    migrations.upgrade(sqlite_empty.url)
    migrations.downgrade(sqlite_empty.url, "base")  # the empty version table stays
    with pytest.raises(SchemaNotReadyError, match="found: none; missing tables"):
        check_schema(sqlite_empty.url)


def test_create_all_tables_are_accepted(db: DatabaseUrls) -> None:
    check_schema(db.url)  # unversioned, but exactly this sagaz's metadata


def test_an_unversioned_table_lacking_a_column_is_refused(sqlite: DatabaseUrls) -> None:
    engine = sa.create_engine(sqlite.url, poolclass=sa.NullPool)
    with engine.begin() as connection:
        connection.exec_driver_sql("ALTER TABLE sagaz_outbox DROP COLUMN headers")
    with pytest.raises(
        SchemaNotReadyError, match=re.escape("missing columns: sagaz_outbox.headers")
    ):
        check_schema(engine)


def test_a_missing_sqlite_file_is_refused_and_not_created(tmp_path: Path) -> None:
    path = tmp_path / "nothing.db"
    with pytest.raises(SchemaNotReadyError, match=f"there is no database at {path}"):
        check_schema(f"sqlite:///{path}")
    assert list(tmp_path.iterdir()) == []


async def test_a_missing_sqlite_file_is_refused_through_an_async_engine(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'nothing.db'}")
    with pytest.raises(SchemaNotReadyError, match="run `sagaz db upgrade`"):
        await check_schema_async(engine)
    await engine.dispose()
    assert not await asyncio.to_thread((tmp_path / "nothing.db").exists)


def test_a_database_that_does_not_answer_is_logged_not_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = "postgresql://app:s3cret-pw@127.0.0.1:9/nothing?connect_timeout=2"
    with caplog.at_level(logging.WARNING, logger="sagaz.store"):
        check_schema(url)
    assert "cannot check sagaz's tables in postgresql://app:***@127.0.0.1:9" in caplog.text
    assert "s3cret-pw" not in caplog.text


def test_the_fix_is_the_callers() -> None:
    empty = SchemaState(version_table=False, revision=None, columns={})
    with pytest.raises(SchemaNotReadyError, match=r"run `python manage.py migrate`$"):
        verify_schema(empty, database="DATABASES['default']", fix=DJANGO_HINT)
    complete = SchemaState(version_table=False, revision=None, columns=expected_columns())
    verify_schema(complete, database="x")
