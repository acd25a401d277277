"""Fixtures of the web-integration tests: the application's own tables next to sagaz's,
an admin engine for pg_stat_activity, and a SagaConfig pointing at the test's database."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from sagaz import SagaConfig
from tests.conftest import DatabaseUrls
from tests.integrations.integration_helpers import app_metadata, step_log


@pytest.fixture
def app_db(pg: DatabaseUrls) -> DatabaseUrls:
    """PostgreSQL with sagaz's tables and the application's (it_orders, it_order_lines)."""
    engine = pg.sync_engine()
    app_metadata.create_all(engine)
    engine.dispose()
    step_log.reset()
    return pg


@pytest.fixture
def sync_db(app_db: DatabaseUrls) -> Iterator[sa.Engine]:
    """A sync engine on the test's database, for checking what was committed. Without a
    pool, so it holds no connection that leak checks would count."""
    engine = app_db.sync_engine(poolclass=sa.NullPool)
    yield engine
    engine.dispose()


@pytest.fixture
def admin(postgres_server_url: str) -> Iterator[sa.Engine]:
    """An engine outside the test's application_name, for pg_stat_activity."""
    engine = sa.create_engine(
        make_url(postgres_server_url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool
    )
    yield engine
    engine.dispose()


@pytest.fixture
def config(app_db: DatabaseUrls) -> SagaConfig:
    """A config on the test's schema (search_path and application_name in the URL)."""
    return SagaConfig(database_url=app_db.url, lease_seconds=1.5)
