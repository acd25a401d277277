"""``manage.py sagaz_cancel``: ``sagaz cancel`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.repair import cancel
from sagaz.integrations.django.management import ClickCommand


class Command(ClickCommand):
    help = (
        "Compensate a PENDING or RUNNING saga; a running one stops at its next step "
        "boundary (`sagaz cancel` on DATABASES[--database])."
    )
    click_command = cancel
