"""Django's startup check: SagaContextMiddleware is built once, when the server starts,
and refuses a database without sagaz's tables at this sagaz's revision, saying to run
`python manage.py migrate` - which itself is not blocked by it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.management import call_command
from django.db import connections
from django.http import HttpRequest, HttpResponse
from django.test import Client, override_settings
from django.test.client import ClientHandler

from sagaz import SchemaNotReadyError
from sagaz.integrations.django import checks
from sagaz.integrations.django.checks import check_schema
from sagaz.integrations.django.middleware import SagaContextMiddleware
from sagaz.store import migrations

(HEAD,) = migrations.heads()
ON_SCRATCH = {"DATABASE": "scratch"}


@pytest.fixture
def scratch() -> Iterator[Path]:
    """The "scratch" SQLite database, empty; emptied again afterwards."""
    path = Path(connections["scratch"].settings_dict["NAME"])
    connections["scratch"].close()
    path.unlink(missing_ok=True)
    checks._passed.discard("scratch")  # checked once per process: check this one anew
    yield path
    connections["scratch"].close()
    path.unlink(missing_ok=True)
    checks._passed.discard("scratch")


def view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


async def async_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def assert_says_migrate(error: BaseException, path: Path) -> None:
    message = str(error)
    assert f"sagaz's tables in DATABASES['scratch'] (sqlite:///{path})" in message
    assert f"are not at revision {HEAD} (found: none; missing tables:" in message
    assert message.endswith(": run `python manage.py migrate`")


@pytest.mark.django_db(transaction=True, databases=["scratch"])
def test_an_unmigrated_database_stops_the_middleware_until_migrate(scratch: Path) -> None:
    with override_settings(SAGAZ=ON_SCRATCH):
        with pytest.raises(SchemaNotReadyError) as raised:
            SagaContextMiddleware(view)
        assert_says_migrate(raised.value, scratch)
        call_command("migrate", "sagaz", database="scratch", verbosity=0)  # not blocked
        SagaContextMiddleware(view)  # at the head revision: starts


@pytest.mark.django_db(transaction=True, databases=["scratch"])
def test_an_older_revision_is_refused(scratch: Path) -> None:
    call_command("migrate", "sagaz", "0002", database="scratch", verbosity=0)
    with pytest.raises(
        SchemaNotReadyError,
        match=f"at revision 0002_json_text, this sagaz "
        f"expects {HEAD}: run `python manage.py migrate`",
    ):
        check_schema("scratch")


@pytest.mark.django_db(transaction=True, databases=["scratch"])
def test_the_request_handler_does_not_start(scratch: Path) -> None:
    with override_settings(SAGAZ=ON_SCRATCH):
        client = Client()
        client.handler = ClientHandler()  # a fresh middleware chain, as a server builds
        with pytest.raises(SchemaNotReadyError, match=re.escape("run `python manage.py migrate`")):
            client.get("/sagaz/health")


@pytest.mark.django_db(transaction=True, databases=["scratch"])
async def test_built_inside_an_event_loop_it_checks_on_a_thread(scratch: Path) -> None:
    with override_settings(SAGAZ=ON_SCRATCH), pytest.raises(SchemaNotReadyError) as raised:
        SagaContextMiddleware(async_view)
    assert_says_migrate(raised.value, scratch)


@pytest.mark.django_db(transaction=True)
def test_the_migrated_test_database_starts() -> None:
    middleware = SagaContextMiddleware(view)
    assert middleware(HttpRequest()).status_code == 200
