"""``manage.py sagaz_retry``: ``sagaz retry`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.repair import retry
from sagaz.integrations.django.management import ClickCommand


class Command(ClickCommand):
    help = (
        "Resume a FAILED saga from where it stopped, or re-run its compensation, under a "
        "lease (`sagaz retry` on DATABASES[--database])."
    )
    click_command = retry
