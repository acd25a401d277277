"""``manage.py sagaz_dlq``: ``sagaz dlq`` on the Django project's database."""

from __future__ import annotations

from sagaz.cli.dlq import dlq
from sagaz.integrations.django.management import ClickGroupCommand


class Command(ClickGroupCommand):
    help = (
        "Dead-lettered outbox events: list, show, requeue, purge (`sagaz dlq` on "
        "DATABASES[--database]; requeue and purge ask for confirmation or take --yes)."
    )
    click_group = dlq
