"""pytest-django for the Django integration tests, and only for them.

Django is configured here, when pytest collects this directory (settings.configure in
pytest_configure, then django.setup()), so the rest of the suite runs as if pytest-django
were not there when this directory is not collected, and is unaffected when it is (no
test outside uses Django's database or settings). The project is the example order
service (examples/integrations/django_app: the `orders` app and its URLs) plus a few
test-only views.

Databases, set up once per session (`django_db_setup`, overridden: no test database is
created, the tables come from `migrate` itself):
* "default": the test PostgreSQL server, in a schema of its own (search_path and
  application_name in OPTIONS), ATOMIC_REQUESTS on, as in the example;
* "sqlite": a SQLite file in a temporary directory;
* "scratch": another SQLite file, left empty for the tests of `migrate` itself;
* "unreachable": a PostgreSQL address where nothing listens (the health view's 503).
Tests use `@pytest.mark.django_db(transaction=True, ...)`: real commits, tables flushed
after each test (sagaz's tables are emptied by `_empty_sagaz_tables`).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = ROOT / "examples" / "integrations" / "django_app"
SCHEMA = f"dj_{uuid.uuid4().hex[:12]}"
APPLICATION_NAME = f"sagaz-test-{SCHEMA}"
_TEMP = Path(tempfile.mkdtemp(prefix="sagaz-django-tests-"))


def pytest_configure(config: pytest.Config) -> None:
    from django.conf import settings

    if settings.configured:
        return
    import django

    if str(EXAMPLE) not in sys.path:
        sys.path.insert(0, str(EXAMPLE))
    settings.configure(
        SECRET_KEY="sagaz-tests",
        DEBUG=False,
        ALLOWED_HOSTS=["testserver"],
        USE_TZ=True,
        INSTALLED_APPS=["sagaz.integrations.django", "orders"],
        MIDDLEWARE=["sagaz.integrations.django.middleware.SagaContextMiddleware"],
        ROOT_URLCONF="tests.integrations.django.urls",
        DATABASES={
            # Filled in by django_db_setup once the PostgreSQL server is known.
            "default": {"ENGINE": "django.db.backends.postgresql", "ATOMIC_REQUESTS": True},
            "sqlite": {
                "ENGINE": "django.db.backends.sqlite3",
                "NAME": str(_TEMP / "sqlite.db"),
                "OPTIONS": {
                    "transaction_mode": "IMMEDIATE",
                    "init_command": "PRAGMA journal_mode=WAL;",
                    "timeout": 30,
                },
            },
            # Not migrated by the session: for tests of `migrate` itself.
            "scratch": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(_TEMP / "scratch.db")},
            "memory": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"},
            # Nothing listens there: for the health view's 503.
            "unreachable": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": "nothing",
                "HOST": "127.0.0.1",
                "PORT": "9",
                "OPTIONS": {"connect_timeout": 2},
            },
        },
        SAGAZ={"LEASE_SECONDS": 2},
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_TEMP, ignore_errors=True)


def postgres_entry(server_url: str) -> dict[str, Any]:
    """The DATABASES entry of the test schema on `server_url`."""
    url = make_url(server_url)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.database or "postgres",
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
        "OPTIONS": {"options": f"-c search_path={SCHEMA}", "application_name": APPLICATION_NAME},
        "ATOMIC_REQUESTS": True,
    }


@pytest.fixture(scope="session")
def admin_engine(postgres_server_url: str) -> Iterator[sa.Engine]:
    """An engine outside the tests' application_name (schemas, pg_stat_activity)."""
    engine = sa.create_engine(
        make_url(postgres_server_url).set(drivername="postgresql+psycopg"), poolclass=sa.NullPool
    )
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def django_db_setup(
    postgres_server_url: str, admin_engine: sa.Engine, django_db_blocker: Any
) -> Iterator[None]:
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connections

    with admin_engine.begin() as connection:
        connection.exec_driver_sql(f'CREATE SCHEMA "{SCHEMA}"')
    settings.DATABASES["default"].update(postgres_entry(postgres_server_url))
    connections["default"].close()
    try:
        with django_db_blocker.unblock():
            for alias in ("default", "sqlite"):
                call_command("migrate", database=alias, verbosity=0, interactive=False)
        yield
    finally:
        with django_db_blocker.unblock():
            connections.close_all()
        with admin_engine.begin() as connection:
            connection.exec_driver_sql(f'DROP SCHEMA "{SCHEMA}" CASCADE')


@pytest.fixture(autouse=True)
def _empty_sagaz_tables(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    from django.db import connections

    from sagaz.store.schema import metadata

    aliases = marker.kwargs.get("databases") or ["default"]
    for alias in aliases:
        if alias == "scratch":
            continue
        with connections[alias].cursor() as cursor:
            for table in reversed(metadata.sorted_tables):
                cursor.execute(f"DELETE FROM {table.name}")


@pytest.fixture(autouse=True)
def _stop_run_saga_loop() -> Iterator[None]:
    """run_saga's loop and thread do not outlive the test (other tests count threads)."""
    yield
    from sagaz.integrations.django import runner

    runner.close()


@pytest.fixture
def step_log() -> Iterator[list[str]]:
    from tests.integrations.django import django_sagas

    django_sagas.STEPS.clear()
    yield django_sagas.STEPS
    django_sagas.STEPS.clear()
