"""``manage.py sagaz_list``: ``sagaz list`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.listing import list_sagas
from sagaz.integrations.django.management import ClickCommand


class Command(ClickCommand):
    help = (
        "List the registered sagas (each app's sagas module is imported at startup) and, "
        "with --instances/--status/--name, recent sagas in DATABASES[--database]."
    )
    click_command = list_sagas
