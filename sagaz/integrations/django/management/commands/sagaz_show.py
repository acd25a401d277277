"""``manage.py sagaz_show``: ``sagaz show`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.show import show
from sagaz.integrations.django.management import ClickCommand


class Command(ClickCommand):
    help = (
        "Show one saga: each step's status, attempts, timings and last error, and the "
        "compensation path (`sagaz show` on DATABASES[--database])."
    )
    click_command = show
