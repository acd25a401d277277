"""An operator's cancel request (`sagaz cancel`): Alembic revision 0004_cancel_requests."""

from __future__ import annotations

from django.db import migrations

from sagaz.integrations.django.operations import AlembicRevision


class Migration(migrations.Migration):
    dependencies = (("sagaz", "0003_worker_claims"),)
    operations = (AlembicRevision("0004_cancel_requests", down_revision="0003_worker_claims"),)
