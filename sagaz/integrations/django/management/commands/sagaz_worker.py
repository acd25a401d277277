"""``manage.py sagaz_worker``: ``sagaz worker`` on the Django project's database."""

from __future__ import annotations

from typing import Any

from sagaz.cli.worker import worker
from sagaz.config import SagaConfig
from sagaz.integrations.django.management import (
    ClickCommand,
    settings_config,
    settings_defaults,
)


class Command(ClickCommand):
    help = (
        "Run the sagas started in the database (atomic_saga_start) and relay outbox events "
        "until SIGTERM/SIGINT: `sagaz worker` on DATABASES[--database], with "
        "the config of settings.SAGAZ (step and saga defaults, broker, lease, metrics, "
        "tracing; options override it). On SIGTERM in-flight sagas get --shutdown-grace "
        "seconds (default: SAGAZ['SHUTDOWN_GRACE_SECONDS']), then are released for "
        "another worker."
    )
    click_command = worker

    def defaults(self, options: dict[str, Any]) -> dict[str, Any]:
        return {**super().defaults(options), **settings_defaults()}

    def saga_config(self, options: dict[str, Any]) -> SagaConfig:
        return settings_config(options)
