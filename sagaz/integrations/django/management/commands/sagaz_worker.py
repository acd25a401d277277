"""``manage.py sagaz_worker``: ``sagaz worker`` on the Django project's database."""

from __future__ import annotations

from typing import Any

from sagaz.cli.worker import worker
from sagaz.integrations.django.management import ClickCommand, settings_defaults


class Command(ClickCommand):
    help = (
        "Run the sagas started in the database (atomic_saga_start) and relay outbox events "
        "until SIGTERM/SIGINT: `sagaz worker` on DATABASES[--database], with "
        "settings.SAGAZ's BROKER_URL and LEASE_SECONDS as defaults. On SIGTERM in-flight "
        "sagas get --shutdown-grace seconds, then are released for another worker."
    )
    click_command = worker

    def defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().defaults(options), **settings_defaults()}
