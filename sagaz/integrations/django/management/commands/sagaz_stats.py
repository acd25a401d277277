"""``manage.py sagaz_stats``: ``sagaz stats`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.stats import stats
from sagaz.integrations.django.management import ClickCommand


class Command(ClickCommand):
    help = (
        "Counts by status and saga name, the outbox backlog, dead letters, lease holders "
        "and sagaz's health (`sagaz stats` on DATABASES[--database])."
    )
    click_command = stats
