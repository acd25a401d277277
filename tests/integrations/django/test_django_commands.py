"""`manage.py sagaz_worker` runs sagas a view started (and stops gracefully);
`manage.py sagaz_list` prints the registered sagas and recent instances; both take their
database from DATABASES and their options from the `sagaz` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import transaction
from django.test import Client, override_settings
from orders.models import Order

from sagaz.integrations.django import atomic_saga_start
from sagaz.integrations.django.conf import database_url
from tests.integrations.django.conftest import APPLICATION_NAME, EXAMPLE, SCHEMA
from tests.integrations.django.django_sagas import NoteSaga
from tests.integrations.django.helpers import committed
from tests.integrations.worker_process import wait_for


@pytest.fixture
def worker() -> Iterator[subprocess.Popen[str]]:
    """`python manage.py sagaz_worker` of the example project, on this test's schema
    (DATABASE_URL, as its README says)."""
    url = database_url("default")
    assert f"search_path%3D{SCHEMA}" in url
    assert APPLICATION_NAME in url
    process = subprocess.Popen(
        [sys.executable, "manage.py", "sagaz_worker", "--poll-interval", "0.2"],
        cwd=EXAMPLE,
        env={**os.environ, "DATABASE_URL": url, "SAGAZ_LEASE_SECONDS": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.django_db(transaction=True)
def test_sagaz_worker_completes_a_saga_a_view_started(worker: subprocess.Popen[str]) -> None:
    client = Client()
    placed = client.post(
        "/orders", {"item": "lamp", "amount": "20"}, content_type="application/json"
    )
    declined = client.post(
        "/orders", {"item": "tv", "amount": "5000"}, content_type="application/json"
    )
    assert (placed.status_code, declined.status_code) == (201, 201)

    def finished() -> bool:
        return {row.status for row in committed()["sagas"]} <= {"completed", "compensated"}

    wait_for(finished)
    statuses = {str(row.id): row.status for row in committed()["sagas"]}
    assert statuses == {
        placed.json()["saga_id"]: "completed",
        declined.json()["saga_id"]: "compensated",
    }
    # the steps ran in the worker process, through the ORM
    assert Order.objects.get(pk=placed.json()["id"]).status == "shipped"
    assert Order.objects.get(pk=declined.json()["id"]).status == "cancelled"
    wait_for(lambda: all(row.status == "published" for row in committed()["events"]))

    worker.send_signal(signal.SIGTERM)
    output, _ = worker.communicate(timeout=30)
    assert worker.returncode == 0, output
    assert "sagaz worker stopped" in output


def test_sagaz_worker_takes_the_options_of_sagaz_worker() -> None:
    with pytest.raises(CommandError, match="nothing to run"):
        call_command("sagaz_worker", "--no-sagas", "--no-outbox", database="sqlite")
    with pytest.raises(CommandError, match="nope"):
        call_command("sagaz_worker", database="nope")
    with pytest.raises(CommandError, match="in-memory SQLite"):
        call_command("sagaz_worker", database="memory")
    help_text = subprocess.run(
        [sys.executable, "manage.py", "sagaz_worker", "--help"],
        cwd=EXAMPLE,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    for option in (
        "--database",
        "--concurrency",
        "--broker-url",
        "--shutdown-grace",
        "--no-outbox",
    ):
        assert option in help_text
    assert "--url" not in help_text  # the database comes from DATABASES


@pytest.mark.django_db(transaction=True)
def test_sagaz_list_prints_the_registered_sagas_and_instances(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("sagaz_list")
    registered = capsys.readouterr().out
    assert "django-order" in registered
    assert "reserve -> charge -> ship" in registered
    assert "django-test-note" in registered

    with transaction.atomic():
        saga_id = atomic_saga_start(NoteSaga, {"n": 1})
    call_command("sagaz_list", "--status", "pending")
    listed = capsys.readouterr().out
    assert saga_id[:8] in listed
    assert "pending" in listed


def test_sagaz_worker_takes_its_broker_from_settings_and_refuses_a_bad_one() -> None:
    with (
        override_settings(SAGAZ={"BROKER_URL": "bogus://broker"}),
        pytest.raises(CommandError, match="unknown broker URL scheme 'bogus://'"),
    ):
        call_command("sagaz_worker", "--no-sagas", database="sqlite")
    # the command line overrides the setting
    with (
        override_settings(SAGAZ={"BROKER_URL": "memory://"}),
        pytest.raises(CommandError, match="unknown broker URL scheme 'other://'"),
    ):
        call_command("sagaz_worker", "--no-sagas", "--broker-url", "other://x", database="sqlite")


@pytest.mark.django_db(transaction=True, databases=["sqlite"])
def test_sagaz_list_imports_the_modules_it_is_given(capsys: pytest.CaptureFixture[str]) -> None:
    call_command(
        "sagaz_list",
        "--import",
        "json",
        "--import",
        "tests.integrations.django.django_sagas",
        database="sqlite",
    )
    assert "django-test-note" in capsys.readouterr().out
    with pytest.raises(CommandError, match="cannot import 'no_such_saga_module'"):
        call_command("sagaz_list", "--import", "no_such_saga_module", database="sqlite")


@pytest.mark.django_db(transaction=True)
def test_the_operator_commands_run_on_the_projects_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`manage.py sagaz_show|sagaz_stats|sagaz_cancel|sagaz_retry`: the `sagaz` commands,
    their saga id a positional argument, on DATABASES (no --url)."""
    with transaction.atomic():
        saga_id = atomic_saga_start(NoteSaga, {"n": 1})
    capsys.readouterr()
    call_command("sagaz_show", saga_id, "--json")
    shown = json.loads(capsys.readouterr().out)
    assert (shown["id"], shown["status"]) == (saga_id, "pending")
    call_command("sagaz_stats", "--json")
    assert json.loads(capsys.readouterr().out)["by_status"] == {"pending": 1}
    call_command("sagaz_cancel", saga_id, "--yes")
    assert "cancel" in capsys.readouterr().out.lower()
    with pytest.raises(CommandError, match="FAILED"):  # only a FAILED saga is retried
        call_command("sagaz_retry", saga_id, "--yes")


@pytest.mark.django_db(transaction=True)
def test_sagaz_dlq_runs_its_subcommands_on_the_projects_database(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("sagaz_dlq", "list", "--json")
    assert json.loads(capsys.readouterr().out) == {"events": []}
    with pytest.raises(CommandError, match="give a subcommand: list, purge, requeue, show"):
        call_command("sagaz_dlq")
    with pytest.raises(CommandError, match="there is no dead-lettered event"):
        call_command("sagaz_dlq", "show", "5b0e5b0e-0000-4000-8000-000000000000")
