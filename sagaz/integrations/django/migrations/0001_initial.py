"""sagaz's tables (sagas, saga steps, outbox, inbox): Alembic revision 0001_initial."""

from __future__ import annotations

from django.db import migrations

from sagaz.integrations.django.operations import AlembicRevision


class Migration(migrations.Migration):
    initial = True
    dependencies = ()
    operations = (AlembicRevision("0001_initial"),)
